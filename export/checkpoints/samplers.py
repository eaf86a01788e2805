"""Sampler recipes: a diffusers scheduler class on a checkpoint's own noise schedule, recorded in the manifest.

The teacher's solver is a deployment choice (``python -m export --teacher-sampler``). Each entry of
:data:`TEACHER_SAMPLERS` is a diffusers scheduler class and the settings that make it the named
solver; :func:`teacher_recipe` applies it to any teacher's ``scheduler_config.json`` (SD1.5's, SDXL's),
so a model family only hands over its schedule and the recipe records the rest.

| name       | diffusers class (settings)                                   | source |
|------------|--------------------------------------------------------------|--------|
| `dpm++2m`  | DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2) | adaptive paper, SD1.5 teacher |
| `ddim`     | DDIMScheduler (eta 0: deterministic)                          | adaptive paper, SDXL baseline (50 DDIM steps) |
| `unipc`    | UniPCMultistepScheduler (bh2, order 2, predict x0: its defaults) | adaptive paper, SDXL teacher (12 adaptive steps) |

Every one has ``order == 1`` (one model call per timestep), which the refine path's img2img schedule
arithmetic (``bll_python.pipeline.refine_schedule_length``) assumes; :func:`teacher_recipe` refuses
any other.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from bll_python.deployment import SchedulerRecipe
from export.checkpoints.errors import SourceError


def scheduler_recipe(cls: str, base: dict[str, Any], *, step_kwargs: dict[str, Any] | None = None, **overrides: Any) -> SchedulerRecipe:
    """``cls`` built by diffusers from ``base`` plus ``overrides``, its full config kept for the manifest."""
    import diffusers

    scheduler_cls = getattr(diffusers, cls)
    # A teacher's PNDM config carries keys (skip_prk_steps) other classes only warn about and drop.
    accepted = set(inspect.signature(scheduler_cls.__init__).parameters)
    config = dict(scheduler_cls.from_config({k: v for k, v in {**base, **overrides}.items() if k in accepted}).config)
    return SchedulerRecipe(cls=cls, config={k: v for k, v in config.items() if not k.startswith("_")}, step_kwargs=dict(step_kwargs or {}))


@dataclass(frozen=True)
class TeacherSampler:
    name: str
    cls: str
    settings: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""


TEACHER_SAMPLERS: dict[str, TeacherSampler] = {
    s.name: s
    for s in (
        TeacherSampler(
            "dpm++2m",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2},
            "DPM-Solver++ 2M, multistep, data prediction",
            "adaptive paper: the SD1.5 teacher's solver",
        ),
        TeacherSampler("ddim", "DDIMScheduler", {}, "DDIM, deterministic (eta 0)", "adaptive paper: the SDXL baseline, 50 DDIM steps"),
        TeacherSampler(
            "unipc",
            "UniPCMultistepScheduler",
            {},
            "UniPC multistep (bh2, order 2, data prediction: diffusers' defaults)",
            "adaptive paper: the SDXL teacher's solver (12 adaptive UniPC steps)",
        ),
    )
}
DEFAULT_TEACHER_SAMPLER = "dpm++2m"
# The solver the paper runs each family's teacher with, when the deployment names none.
FAMILY_TEACHER_SAMPLERS = {"sd15": "dpm++2m", "sdxl": "unipc"}


def family_teacher_sampler(family: str) -> str:
    """The paper's teacher solver for a model family (``bll_python.families``): UniPC for SDXL."""
    return FAMILY_TEACHER_SAMPLERS.get(family, DEFAULT_TEACHER_SAMPLER)


def teacher_sampler(name: str) -> TeacherSampler:
    if name not in TEACHER_SAMPLERS:
        raise SourceError(f"--teacher-sampler {name!r} is not supported; choose one of {list(TEACHER_SAMPLERS)}")
    return TEACHER_SAMPLERS[name]


def teacher_recipe(teacher_schedule: dict[str, Any], sampler: str = DEFAULT_TEACHER_SAMPLER) -> SchedulerRecipe:
    """The named solver on the teacher's own noise schedule (``scheduler/scheduler_config.json``)."""
    chosen = teacher_sampler(sampler)
    recipe = scheduler_recipe(chosen.cls, teacher_schedule, **chosen.settings)
    order = recipe.build().order
    if order != 1:  # a second-order-per-step class (Heun, KDPM2) would break refine_schedule_length
        raise SourceError(f"--teacher-sampler {sampler}: {chosen.cls} makes {order} model calls per timestep; the refine schedule needs 1")
    return recipe


def describe(recipe: SchedulerRecipe) -> str:
    """One line for reports: the sampler's name where it is one of ours, its class and settings."""
    name = next((s.name for s in TEACHER_SAMPLERS.values() if s.cls == recipe.cls and all(recipe.config.get(k) == v for k, v in s.settings.items())), None)
    settings = ", ".join(f"{k}={recipe.config.get(k)!r}" for k in ("algorithm_type", "solver_order", "solver_type", "timestep_spacing") if k in recipe.config)
    return f"{name + ': ' if name else ''}{recipe.cls}({settings})"
