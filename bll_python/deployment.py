"""What an export produced and how to serve it: dims, samplers, defaults and the calibrated gate.

The manifest is plain JSON written by ``export`` into the model repository, so the server needs
no flags: the student kind, its sampler, the teacher solver and the default ``tau`` all travel with
the weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bll_python.components import Component, family_components
from bll_python.load_policy import LoadPolicySettings
from bll_python.settings import GenerationSettings, SettingsError, check_number
from bll_python.specs import ComponentSpec, SymbolRange, scaled

MANIFEST = "deployment.json"


@dataclass
class SchedulerRecipe:
    """A diffusers scheduler class name, its config, and the extra ``set_timesteps``/``step`` kwargs."""

    cls: str
    config: dict[str, Any]
    set_timesteps_kwargs: dict[str, Any] = field(default_factory=dict)
    step_kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self):
        import diffusers

        return getattr(diffusers, self.cls).from_config(self.config)


@dataclass
class Calibration:
    """``percentiles[k]`` is the k-th percentile (k = 0..100) of student ImageReward scores."""

    percentiles: list[float]
    prompts: int
    settings: dict[str, Any]
    # Wall time per student sample (student steps, decode, ImageReward) on the exporting machine.
    student_seconds_per_image: float | None = None

    def tau(self, k: float) -> float:
        k = check_number("k", k)
        # Linear interpolation between the stored integer percentiles.
        return float(np.interp(k, np.arange(101), np.asarray(self.percentiles)))


@dataclass
class Deployment:
    preset: str
    student_kind: str
    seq_len: int
    text_hidden: int
    latent_channels: int
    latent_size: int
    vae_scale: int
    reward_text_len: int
    max_rows: int
    student_scheduler: SchedulerRecipe
    teacher_scheduler: SchedulerRecipe
    defaults: GenerationSettings
    default_k: float = 50.0
    timestep_cond_dim: int | None = None
    calibration: Calibration | None = None
    # The LCM guidance embedding replaces true CFG for students distilled with it.
    student_uses_cfg: bool = True
    # The model family (bll_python.families) and the dims only SDXL has: the second text tower's
    # width, the pooled prompt vector's width and the number of size-conditioning values.
    family: str = "sd15"
    text_hidden_2: int | None = None
    pooled_dim: int | None = None
    time_ids_dim: int | None = None
    # SDXL base's ``force_zeros_for_empty_prompt``: an empty negative prompt conditions on zeros.
    zero_empty_negative: bool = False
    # Per-request image sizes, in pixels: every multiple of ``size_multiple`` in [min, max] (the
    # engine profiles' range). None: the native size only (manifests from before per-request sizes).
    min_image_size: int | None = None
    max_image_size: int | None = None
    size_multiple: int = 8
    # The checkpoint's VAE config says ``force_upcast`` and the family honours it (SDXL): diffusers
    # decodes it in FP32 because its activations overflow FP16, so its FP16 engine stays FP32
    # (the component record's ``fp32_when``). False for the fp16-fix VAE and for SD1.5.
    vae_force_upcast: bool = False
    # Optional components this export has (``unet_refiner``: SDXL-Refiner).
    optional_components: list[str] = field(default_factory=list)
    # SDXL-Refiner (supplement D.3): it refines rows whose rollback ``sigma`` is at most
    # ``refiner_max_sigma`` (small fixes); larger rollbacks go to the base teacher. Its time ids end in
    # an aesthetic score (StableDiffusionXLImg2ImgPipeline's ``requires_aesthetics_score``).
    refiner_max_sigma: float | None = None
    refiner_time_ids_dim: int | None = None
    refiner_scheduler: SchedulerRecipe | None = None
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5
    # None: k is static. Otherwise the BLS lowers k toward a floor under load (bll_python.load_policy).
    load_policy: LoadPolicySettings | None = None

    # ------------------------------------------------------------------ specs

    @property
    def image_size(self) -> int:
        return self.latent_size * self.vae_scale

    @property
    def latent_range(self) -> SymbolRange | None:
        """The latent side's (min, native, max), or None when the deployment serves its native size only."""
        if self.min_image_size is None or self.max_image_size is None:
            return None
        return SymbolRange(self.min_image_size // self.vae_scale, self.latent_size, self.max_image_size // self.vae_scale)

    @property
    def image_range(self) -> SymbolRange | None:
        r = self.latent_range
        return scaled(r, self.vae_scale) if r else None

    def resolve_size(self, settings: GenerationSettings) -> tuple[int, int]:
        """(height, width) in pixels of a request's images: the native size unless it asks for
        another that this deployment's engines take."""
        native = self.image_size
        size = {"height": settings.height or native, "width": settings.width or native}
        low, high = (self.min_image_size, self.max_image_size) if self.latent_range else (native, native)
        for name, value in size.items():
            if not (low <= value <= high and value % self.size_multiple == 0):
                allowed = f"{native} only" if low == high else f"multiples of {self.size_multiple} in [{low}, {high}]"
                raise SettingsError(name, f"got {value}; this deployment allows {allowed}")
        return size["height"], size["width"]

    @property
    def context_dim(self) -> int:
        """The width of the UNet's ``encoder_hidden_states``: SDXL concatenates its two towers."""
        return self.text_hidden + (self.text_hidden_2 or 0)

    def components(self) -> dict[str, Component]:
        return family_components(self.family, self.optional_components)

    def uses_refiner(self, sigma: float) -> bool:
        return "unet_refiner" in self.optional_components and self.refiner_max_sigma is not None and sigma <= self.refiner_max_sigma

    def specs(self) -> dict[str, ComponentSpec]:
        """Every component's tensors at this deployment's dims, in component order."""
        return {name: c.deployment_spec(self) for name, c in self.components().items()}

    # ------------------------------------------------------------------ gate

    def requested_k(self, settings: GenerationSettings) -> float | None:
        """The percentile a batch asks for (its own k or the default); None when it gave tau."""
        if settings.tau is not None:
            return None
        return settings.k if settings.k is not None else self.default_k

    def resolve_tau(self, settings: GenerationSettings) -> float:
        if settings.tau is not None:
            return settings.tau
        if self.calibration is None:
            field_name = "k" if settings.k is not None else "tau"
            raise SettingsError(field_name, "this deployment has no calibration; pass tau explicitly")
        return self.calibration.tau(self.requested_k(settings))

    # ------------------------------------------------------------------ io

    def expected_image_seconds(self) -> float | None:
        """Seconds the whole machine spends on one image at the default settings, from the calibration's
        student timing and the budget rule (a teacher step costs about a student step); None uncalibrated."""
        c = self.calibration
        if c is None or not c.student_seconds_per_image:
            return None
        d = self.defaults
        steps = d.student_steps + (1.0 - self.default_k / 100.0) * d.teacher_steps
        return c.student_seconds_per_image * steps / d.student_steps

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["defaults"] = self.defaults.as_dict()
        return d

    def save(self, directory: Path) -> Path:
        path = directory / MANIFEST
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Deployment":
        d = dict(d)
        d["student_scheduler"] = SchedulerRecipe(**d["student_scheduler"])
        d["teacher_scheduler"] = SchedulerRecipe(**d["teacher_scheduler"])
        d["defaults"] = GenerationSettings(**d["defaults"])
        if d.get("refiner_scheduler"):
            d["refiner_scheduler"] = SchedulerRecipe(**d["refiner_scheduler"])
        if d.get("calibration"):
            d["calibration"] = Calibration(**d["calibration"])
        if d.get("load_policy"):
            d["load_policy"] = LoadPolicySettings(**d["load_policy"])
        return cls(**d)

    @classmethod
    def load(cls, directory: Path) -> "Deployment":
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no {MANIFEST} in {directory}: export a model first (python -m export --help)")
        return cls.from_json(json.loads(path.read_text()))
