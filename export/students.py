"""Student kinds: how each distilled model is loaded and which sampler it was distilled for.

Each kind brings its own scheduler recipe, taken from its paper / published usage. Adding a kind
is adding one entry to ``STUDENT_KINDS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bll_python.deployment import SchedulerRecipe


class SourceError(ValueError):
    """A checkpoint is missing, malformed or of an unsupported kind; the message names it."""


def _scheduler_config(path: Path | None, fallback: dict[str, Any]) -> dict[str, Any]:
    import json

    if path is not None and (path / "scheduler_config.json").is_file():
        cfg = json.loads((path / "scheduler_config.json").read_text())
        return {k: v for k, v in cfg.items() if not k.startswith("_")}
    return dict(fallback)


def _recipe(cls: str, base: dict[str, Any], **overrides: Any) -> SchedulerRecipe:
    import diffusers

    config = dict(getattr(diffusers, cls).from_config({**base, **overrides}).config)
    return SchedulerRecipe(cls=cls, config={k: v for k, v in config.items() if not k.startswith("_")})


def load_full_unet(path: Path):
    """A diffusers UNet folder, or a student folder holding one under ``unet/``."""
    from diffusers import UNet2DConditionModel

    unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
    if not (unet_dir / "config.json").is_file():
        raise SourceError(f"student: no UNet config.json in {path} or {path / 'unet'}")
    return UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True)


@dataclass(frozen=True)
class StudentKind:
    name: str
    description: str
    scheduler: Callable[[Path, dict[str, Any]], SchedulerRecipe]
    uses_cfg: bool = True
    defaults: dict[str, Any] = field(default_factory=dict)


def _cd_scheduler(path: Path, teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    # Multistep consistency sampling (the paper's CD-SD1.5), which diffusers implements as LCMScheduler.
    return _recipe("LCMScheduler", _scheduler_config(path / "scheduler", teacher_schedule))


STUDENT_KINDS: dict[str, StudentKind] = {
    "cd": StudentKind(
        "cd",
        "full distilled UNet, true classifier-free guidance, multistep consistency sampling",
        _cd_scheduler,
        uses_cfg=True,
        defaults={"student_steps": 5, "guidance_scale": 8.0},
    ),
}


def student_kind(name: str) -> StudentKind:
    if name not in STUDENT_KINDS:
        raise SourceError(f"--student-kind {name!r} is not supported; choose one of {sorted(STUDENT_KINDS)}")
    return STUDENT_KINDS[name]


def teacher_recipe(teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    """DPM-Solver++ 2M on the teacher's own noise schedule (the paper's teacher solver)."""
    return _recipe("DPMSolverMultistepScheduler", teacher_schedule, algorithm_type="dpmsolver++", solver_order=2)
