"""One record per component: everything the project knows about a deployable model, in one place.

The deployment's specs, the engines, TensorRT's FP32 rules and tolerances, GPU placement, the
metric stages and the export wrappers are all lookups over :data:`COMPONENTS`. Adding a component
(say SDXL's second text encoder) is one record here, its tensors in ``bll_python.specs``, and its
export wrapper in ``export.models.wrappers``.

The records are plain data: ``wrapper`` names the export wrapper as an import path that
``export`` resolves, so this package never imports ``export``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from bll_python.precision import (
    FORCE_UPCAST,
    NORMALIZATION,
    REWARD_HEAD,
    REWARD_ROOT_OPS,
    SOFTMAX,
    TIME_PROJ,
    Fp32Rule,
    Tolerance,
)
from bll_python.specs import ComponentSpec, image_reward_spec, text_encoder_2_spec, text_encoder_spec, unet_spec, vae_decoder_spec

if TYPE_CHECKING:
    from bll_python.deployment import Deployment


@dataclass(frozen=True)
class Component:
    name: str
    # (deployment, max rows of one call) -> the tensors of this deployment's graph.
    spec: Callable[["Deployment", int], ComponentSpec]
    # Rows per request row in one call: 2 where classifier-free guidance stacks the unconditional rows.
    cfg_rows: int
    # The loaded checkpoint part the export wrapper wraps (a key of ``LoadedModels.raw``).
    source: str
    # ``module:attribute`` of the export wrapper: (checkpoint part) -> a module taking the spec's inputs.
    wrapper: str
    # The pipeline stage that calls it, as ``adaptive_stage_seconds{stage=...}`` labels it.
    stage: str
    fp32_rules: tuple[Fp32Rule, ...]
    tolerance: Tolerance
    # Model instances per GPU unless a placement says otherwise.
    instances: int = 1
    # Calls whose outputs the pipeline keeps for the rest of a request (the text embeddings through
    # every denoising step; the student's and the teacher's decoded images until the response). On a
    # GPU they are held in Triton's CUDA pool, so they size it (export.triton.tensorrt).
    held_outputs: int = 0
    # The model families (``bll_python.families``) that deploy it.
    families: tuple[str, ...] = ("sd15", "sdxl")
    # Deployed only when the export was given its checkpoint (``Deployment.optional_components``).
    optional: bool = False
    # A boolean ``Deployment`` field that, when true, keeps the whole graph in FP32 (``FORCE_UPCAST``):
    # the checkpoint itself says FP16 is unsafe for it (the VAE's ``force_upcast``).
    fp32_when: str | None = None

    def deployment_spec(self, deployment: "Deployment") -> ComponentSpec:
        return self.spec(deployment, deployment.max_rows * self.cfg_rows)

    def fp32_rules_for(self, deployment: "Deployment | None") -> tuple[Fp32Rule, ...]:
        """The FP32 rules of this component's FP16 engine in ``deployment`` (None: the record's own)."""
        if deployment is not None and self.fp32_when and getattr(deployment, self.fp32_when):
            return (FORCE_UPCAST,)
        return self.fp32_rules


def _latents(d: "Deployment") -> dict[str, int | None]:
    return dict(
        latent_channels=d.latent_channels,
        latent_size=d.latent_size,
        seq_len=d.seq_len,
        text_hidden=d.context_dim,
        pooled_dim=d.pooled_dim,
        time_ids_dim=d.time_ids_dim,
        latent_range=d.latent_range,
    )


_UNET_TOLERANCE = Tolerance(3e-2, 5e-2, "noise_pred ~ N(0, 1); FP16 UNets stay near 1e-2 with rare outliers")

TEXT_ENCODER = Component(
    "text_encoder",
    spec=lambda d, rows: text_encoder_spec(seq_len=d.seq_len, hidden=d.text_hidden, max_batch=rows),
    cfg_rows=2,
    source="text_encoder",
    wrapper="export.models.wrappers:TextEncoder",
    stage="text",
    fp32_rules=(NORMALIZATION, SOFTMAX),
    tolerance=Tolerance(3e-2, 3e-2, "CLIP states reach |x| ~ 30 in outlier channels; rtol covers those, atol the rest"),
    held_outputs=1,
)
TEXT_ENCODER_2 = Component(
    "text_encoder_2",
    spec=lambda d, rows: text_encoder_2_spec(seq_len=d.seq_len, hidden=d.text_hidden_2, pooled=d.pooled_dim, max_batch=rows),
    cfg_rows=2,
    source="text_encoder_2",
    wrapper="export.models.wrappers:TextEncoder2",
    stage="text",
    fp32_rules=(NORMALIZATION, SOFTMAX),
    tolerance=Tolerance(3e-2, 3e-2, "CLIP-like hidden states and the pooled projection"),
    held_outputs=2,
    families=("sdxl",),
)
UNET_STUDENT = Component(
    "unet_student",
    spec=lambda d, rows: unet_spec("unet_student", max_batch=rows, timestep_cond_dim=d.timestep_cond_dim, **_latents(d)),
    cfg_rows=2,
    source="unet_student",
    wrapper="export.models.wrappers:UNet",
    stage="student",
    fp32_rules=(NORMALIZATION, TIME_PROJ),
    tolerance=_UNET_TOLERANCE,
)
UNET_TEACHER = Component(
    "unet_teacher",
    spec=lambda d, rows: unet_spec("unet_teacher", max_batch=rows, **_latents(d)),
    cfg_rows=2,
    source="unet_teacher",
    wrapper="export.models.wrappers:UNet",
    stage="teacher",
    fp32_rules=(NORMALIZATION, TIME_PROJ),
    tolerance=_UNET_TOLERANCE,
)
UNET_REFINER = Component(
    "unet_refiner",
    # SDXL-Refiner: conditioned on the second tower only, with aesthetic-score time ids.
    spec=lambda d, rows: unet_spec(
        "unet_refiner",
        max_batch=rows,
        **{**_latents(d), "text_hidden": d.text_hidden_2, "time_ids_dim": d.refiner_time_ids_dim},
    ),
    cfg_rows=2,
    source="unet_refiner",
    wrapper="export.models.wrappers:UNet",
    stage="teacher",
    fp32_rules=(NORMALIZATION, TIME_PROJ),
    tolerance=_UNET_TOLERANCE,
    families=("sdxl",),
    optional=True,
)
VAE_DECODER = Component(
    "vae_decoder",
    spec=lambda d, rows: vae_decoder_spec(latent_channels=d.latent_channels, latent_size=d.latent_size, scale=d.vae_scale, max_batch=rows, latent_range=d.latent_range),
    cfg_rows=1,
    source="vae",
    wrapper="export.models.wrappers:VaeDecoder",
    stage="decode",
    fp32_rules=(NORMALIZATION, SOFTMAX),
    tolerance=Tolerance(2e-2, 2e-2, "pixels in [0, 1]: 2e-2 is 5 of 255 levels"),
    held_outputs=2,
    fp32_when="vae_force_upcast",
)
IMAGE_REWARD = Component(
    "image_reward",
    spec=lambda d, rows: image_reward_spec(image_size=d.image_size, text_len=d.reward_text_len, max_batch=rows),
    cfg_rows=1,
    source="image_reward",
    # The scorer is built in spec order already (export.models.image_reward).
    wrapper="export.models.wrappers:as_is",
    stage="reward",
    fp32_rules=(NORMALIZATION, SOFTMAX, REWARD_HEAD, REWARD_ROOT_OPS),
    tolerance=Tolerance(2e-2, 1e-2, "the gate compares scores with tau; student scores spread ~1"),
    held_outputs=1,
)

# Every table keyed by component (engines, configs, reports) follows this order.
COMPONENTS: dict[str, Component] = {c.name: c for c in (TEXT_ENCODER, TEXT_ENCODER_2, UNET_STUDENT, UNET_TEACHER, UNET_REFINER, VAE_DECODER, IMAGE_REWARD)}
COMPONENT_NAMES: tuple[str, ...] = tuple(COMPONENTS)
# The components every family deploys; the others belong to some families only.
CORE_COMPONENTS: tuple[str, ...] = tuple(n for n, c in COMPONENTS.items() if set(c.families) >= {"sd15", "sdxl"} and not c.optional)


def family_components(family: str, optional: tuple[str, ...] | list[str] = ()) -> dict[str, Component]:
    """The records a deployment of ``family`` serves (its ``optional`` ones only if named), in component order."""
    return {n: c for n, c in COMPONENTS.items() if family in c.families and (not c.optional or n in optional)}


def component(name: str) -> Component:
    try:
        return COMPONENTS[name]
    except KeyError:
        raise KeyError(f"no component {name!r}; the components are {list(COMPONENT_NAMES)}") from None
