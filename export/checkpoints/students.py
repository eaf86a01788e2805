"""Student kinds: how each distilled model is loaded and which sampler it was distilled for.

A kind knows three things: how to turn its checkpoint into one plain ``UNet2DConditionModel`` (a
full distilled UNet, or a LoRA fused into the teacher's UNet), which diffusers scheduler and
``step`` arguments its authors sample it with, and whether it runs true classifier-free guidance.
Adding a kind is adding one entry to ``STUDENT_KINDS``.

| kind       | checkpoint                               | sampler (diffusers)                         | CFG  | source |
|------------|------------------------------------------|---------------------------------------------|------|--------|
| `cd`       | full UNet folder                         | LCMScheduler (multistep consistency)        | true | adaptive paper, supplement A (CD-SD1.5: 5 steps, w in [1, 8]) |
| `lcm`      | full UNet with `time_cond_proj_dim`      | LCMScheduler, w fed as an embedding         | no   | LCM paper; SimianLuo/LCM_Dreamshaper_v7 card (4 steps, w = 8) |
| `lcm-lora` | LoRA, fused into the teacher UNet        | LCMScheduler                                | no   | latent-consistency/lcm-lora-sdv1-5 card (4 steps, guidance 0) |
| `hyper-sd` | LoRA, fused into the teacher UNet        | TCDScheduler, ``step(eta=0.3)``             | no   | Hyper-SD paper 3.3 (TCD, 1-8 steps); ByteDance/Hyper-SD card |
| `flash`    | LoRA, fused into the teacher UNet        | LCMScheduler(timestep_spacing="trailing")   | no   | Flash Diffusion paper (4 targeted timesteps); jasperai/flash-sd card |

| `add`      | full UNet (ADD-XL: SDXL-Turbo layout)    | EulerAncestralDiscreteScheduler(trailing), from its `scheduler/` | no | ADD paper; stabilityai/sdxl-turbo card (1-4 steps, guidance 0) |
| `lightning`| LoRA, fused into the teacher UNet        | EulerDiscreteScheduler(timestep_spacing="trailing") | no | ByteDance/SDXL-Lightning card (2/4/8-step LoRAs, guidance 0) |

The kinds marked "no" were distilled with the teacher's guidance folded in, so the serving
``guidance_scale`` drives only the teacher (and, for ``lcm``, the w-embedding).

SDXL students (the teacher folder is SDXL, ``bll_python.families``) take the same kinds: CD-SDXL and
LCM-SDXL (latent-consistency/lcm-sdxl, guidance embedding) are ``cd``/``lcm``; ADD-XL is ``add``;
LCM-LoRA-SDXL, Hyper-SDXL (the 1-step unified LoRA, TCD), Flash-SDXL and SDXL-Lightning are LoRA
kinds, fused into the SDXL base UNet. Their samplers are those of the SD1.5 kinds built on the SDXL
base's schedule, as each card builds them from ``pipe.scheduler.config``. Defaults for SDXL follow
the paper's Table 5 (supplement D.3): CD-SDXL 4 steps, 12 refinement steps, sigma 0.85, k 70;
ADD-XL 2 steps, 4 refinement steps, sigma 0.4, k 50.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from bll_python.deployment import SchedulerRecipe
from export.checkpoints.errors import SourceError
from export.checkpoints.lora import fused_lora_unet
from export.checkpoints.samplers import scheduler_recipe as _recipe
from export.checkpoints.unet import load_full_unet

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel


def _load_cd_unet(student: Path, teacher: Path) -> "UNet2DConditionModel":
    unet = load_full_unet(student)
    if unet.config.time_cond_proj_dim is not None:
        raise SourceError(
            f"student: {student} has a guidance embedding (time_cond_proj_dim={unet.config.time_cond_proj_dim}): "
            "it is a latent consistency model; use --student-kind lcm"
        )
    return unet


def _load_lcm_unet(student: Path, teacher: Path) -> "UNet2DConditionModel":
    unet = load_full_unet(student)
    if unet.config.time_cond_proj_dim is None:
        raise SourceError(
            f"student: {student} has no guidance embedding (time_cond_proj_dim is null), which --student-kind lcm needs; "
            "a full UNet sampled with true CFG is --student-kind cd"
        )
    return unet


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def _scheduler_config(path: Path | None, fallback: dict[str, Any]) -> dict[str, Any]:
    if path is not None and (path / "scheduler_config.json").is_file():
        cfg = json.loads((path / "scheduler_config.json").read_text())
        return {k: v for k, v in cfg.items() if not k.startswith("_")}
    return dict(fallback)


def _student_folder_scheduler(path: Path) -> Path | None:
    # A full-UNet student may ship its own sampler config (LCM_Dreamshaper_v7 does, under scheduler/).
    return path / "scheduler" if path.is_dir() else None


def _cd_scheduler(path: Path, teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    # Multistep consistency sampling (the paper's CD-SD1.5), which diffusers implements as LCMScheduler.
    return _recipe("LCMScheduler", _scheduler_config(_student_folder_scheduler(path), teacher_schedule))


def _lcm_scheduler(path: Path, teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    return _recipe("LCMScheduler", _scheduler_config(_student_folder_scheduler(path), teacher_schedule))


def _lcm_lora_scheduler(path: Path, teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    # The card: pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config), i.e. the base model's schedule.
    return _recipe("LCMScheduler", teacher_schedule)


TCD_ETA = 0.3


def _hyper_sd_scheduler(path: Path, teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    # TCDScheduler.from_config(pipe.scheduler.config) and pipe(..., eta=...). The card's comment:
    # lower eta gives more detail in multi-step sampling; 0.3 is TCD's own default gamma.
    return _recipe("TCDScheduler", teacher_schedule, step_kwargs={"eta": TCD_ETA})


def _add_scheduler(path: Path, teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    # sdxl-turbo ships scheduler/ = EulerAncestralDiscreteScheduler with timestep_spacing "trailing";
    # without that folder (a bare UNet), the same on the teacher's schedule.
    return _recipe("EulerAncestralDiscreteScheduler", _scheduler_config(_student_folder_scheduler(path), teacher_schedule), timestep_spacing="trailing")


def _lightning_scheduler(path: Path, teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    # The card: EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing").
    return _recipe("EulerDiscreteScheduler", teacher_schedule, timestep_spacing="trailing")


def _load_add_unet(student: Path, teacher: Path) -> "UNet2DConditionModel":
    return _load_cd_unet(student, teacher)


def _flash_scheduler(path: Path, teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    # The card: LCMScheduler.from_pretrained(<SD1.5>, subfolder="scheduler", timestep_spacing="trailing").
    return _recipe("LCMScheduler", teacher_schedule, timestep_spacing="trailing")


@dataclass(frozen=True)
class StudentKind:
    name: str
    description: str
    # (student source, teacher pipeline folder) -> one plain UNet: LoRA kinds fuse into the teacher's.
    load_unet: Callable[[Path, Path], "UNet2DConditionModel"]
    scheduler: Callable[[Path, dict[str, Any]], SchedulerRecipe]
    uses_cfg: bool = True
    defaults: dict[str, Any] = field(default_factory=dict)
    is_lora: bool = False
    # Sampler ``step`` arguments a user may override at export (e.g. TCD's eta).
    tunable: tuple[str, ...] = ()
    source: str = ""
    # Serving defaults that replace ``defaults`` for an SDXL teacher (the paper's Table 5).
    xl_defaults: dict[str, Any] = field(default_factory=dict)
    # The families whose students this kind describes.
    families: tuple[str, ...] = ("sd15", "sdxl")

    def defaults_for(self, family: str) -> dict[str, Any]:
        if family not in self.families:
            raise SourceError(f"--student-kind {self.name} has no {family} students; the {family} kinds are {[k.name for k in STUDENT_KINDS.values() if family in k.families]}")
        if family != "sdxl":
            return dict(self.defaults)
        # SDXL base's own default guidance is 5.0 (StableDiffusionXLPipeline), unless the kind publishes one.
        return {"guidance_scale": 5.0, **self.defaults, **self.xl_defaults}


STUDENT_KINDS: dict[str, StudentKind] = {
    "cd": StudentKind(
        "cd",
        "full distilled UNet, true classifier-free guidance, multistep consistency sampling",
        _load_cd_unet,
        _cd_scheduler,
        uses_cfg=True,
        defaults={"student_steps": 5, "guidance_scale": 8.0},
        source="adaptive teacher-student paper, supplement A: CD-SD1.5, multistep stochastic consistency sampler, 5 steps, CFG applied directly (trained for w in [1, 8])",
        xl_defaults={"student_steps": 4, "teacher_steps": 12, "sigma": 0.85, "k": 70.0},
    ),
    "lcm": StudentKind(
        "lcm",
        "full latent consistency UNet with a guidance embedding (time_cond_proj_dim), no CFG",
        _load_lcm_unet,
        _lcm_scheduler,
        uses_cfg=False,
        defaults={"student_steps": 4, "guidance_scale": 8.0},
        source="LCM paper (w-conditioned consistency distillation); SimianLuo/LCM_Dreamshaper_v7 card: LCMScheduler, num_inference_steps=4, guidance_scale=8.0",
    ),
    "lcm-lora": StudentKind(
        "lcm-lora",
        "LCM-LoRA fused into the teacher UNet, LCMScheduler, no CFG",
        fused_lora_unet,
        _lcm_lora_scheduler,
        uses_cfg=False,
        defaults={"student_steps": 4},
        is_lora=True,
        source="latent-consistency/lcm-lora-sdv1-5 card: LCMScheduler.from_config(pipe.scheduler.config), fuse_lora, num_inference_steps=4, guidance_scale=0",
    ),
    "hyper-sd": StudentKind(
        "hyper-sd",
        "Hyper-SD15 LoRA fused into the teacher UNet, TCDScheduler with eta, no CFG",
        fused_lora_unet,
        _hyper_sd_scheduler,
        uses_cfg=False,
        defaults={"student_steps": 4},
        is_lora=True,
        tunable=("eta",),
        source="Hyper-SD paper 3.3 (TCD scheduler, 1 to 8 steps); ByteDance/Hyper-SD card: fuse_lora, TCDScheduler.from_config(pipe.scheduler.config), guidance_scale=0, eta (lower = more detail); eta 0.3 = TCD's default gamma",
    ),
    "flash": StudentKind(
        "flash",
        "Flash Diffusion SD1.5 LoRA fused into the teacher UNet, LCMScheduler (trailing), no CFG",
        fused_lora_unet,
        _flash_scheduler,
        uses_cfg=False,
        defaults={"student_steps": 4},
        is_lora=True,
        source="Flash Diffusion paper (student trained on 4 targeted timesteps, teacher CFG distilled in); jasperai/flash-sd card: LCMScheduler(timestep_spacing='trailing'), num_inference_steps=4, guidance_scale=0",
    ),
    "add": StudentKind(
        "add",
        "adversarial-diffusion-distilled full UNet (ADD-XL, SDXL-Turbo), Euler ancestral with trailing timesteps, no CFG",
        _load_add_unet,
        _add_scheduler,
        uses_cfg=False,
        defaults={"student_steps": 2},
        source="ADD paper (1-4 steps, no CFG); stabilityai/sdxl-turbo card: num_inference_steps=1, guidance_scale=0.0, scheduler/ EulerAncestralDiscreteScheduler timestep_spacing='trailing'; adaptive paper Table 5: ADD-XL 2 steps",
        xl_defaults={"student_steps": 2, "teacher_steps": 4, "sigma": 0.4, "k": 50.0},
        families=("sdxl",),
    ),
    "lightning": StudentKind(
        "lightning",
        "SDXL-Lightning LoRA fused into the teacher UNet, Euler with trailing timesteps, no CFG",
        fused_lora_unet,
        _lightning_scheduler,
        uses_cfg=False,
        defaults={"student_steps": 4},
        is_lora=True,
        source="ByteDance/SDXL-Lightning card: load_lora_weights + fuse_lora, EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing='trailing'), guidance_scale=0, steps = the LoRA's (2, 4 or 8; 4 here)",
        families=("sdxl",),
    ),
}


def student_kind(name: str) -> StudentKind:
    if name not in STUDENT_KINDS:
        raise SourceError(f"--student-kind {name!r} is not supported; choose one of {sorted(STUDENT_KINDS)}")
    return STUDENT_KINDS[name]


def check_sampler_overrides(kind: StudentKind, overrides: dict[str, Any] | None) -> dict[str, float]:
    """Validate sampler ``step`` overrides (e.g. ``{"eta": 0.5}``) against the kind's tunables."""
    checked: dict[str, float] = {}
    for key, value in (overrides or {}).items():
        if key not in kind.tunable:
            takers = [k.name for k in STUDENT_KINDS.values() if key in k.tunable]
            raise SourceError(f"--{key} does not apply to --student-kind {kind.name}; it applies to {takers}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise SourceError(f"--{key}: got {value!r}; allowed range [0, 1]")
        checked[key] = float(value)
    return checked


def apply_sampler_overrides(kind: StudentKind, recipe: SchedulerRecipe, overrides: dict[str, Any] | None) -> SchedulerRecipe:
    recipe.step_kwargs.update(check_sampler_overrides(kind, overrides))
    return recipe
