"""The ``shapes`` preset: the committed, trained checkpoints, exported like any other checkpoint.

Unlike ``tiny`` and ``small`` nothing is generated here: the preset is the three folders under
``export/world/checkpoints/`` (an SD1.5-layout teacher, an ``lcm`` student, ``ImageReward.pt``),
the serving defaults the world was trained for, and the calibration prompt file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bll_python.settings import GenerationSettings
from export.checkpoints.sources import Sources
from export.world.config import CALIBRATION_FILE, CHECKPOINTS_DIR, ServingConfig

STUDENT_KIND = "lcm"
# tau is the k-th percentile of student scores; the paper used 500-600 samples. There are 170
# calibration prompts, so each is drawn with three seeds (the calibration's seed is the row index).
CALIBRATION_SEEDS_PER_PROMPT = 3


@dataclass(frozen=True)
class TrainedPreset:
    sources: Sources
    defaults: GenerationSettings
    calibration_prompts: list[str]


def shapes_sources(root: Path = CHECKPOINTS_DIR) -> Sources:
    root = Path(root)
    return Sources(
        teacher=root / "teacher",
        student=root / "student",
        student_kind=STUDENT_KIND,
        reward=root / "reward" / "ImageReward.pt",
        reward_config=root / "reward" / "ImageReward.config.json",
    )


def shapes_defaults(serving: ServingConfig | None = None) -> GenerationSettings:
    s = serving or ServingConfig()
    return GenerationSettings(guidance_scale=s.guidance_scale, student_steps=s.student_steps, teacher_steps=s.teacher_steps, sigma=s.sigma)


def calibration_prompts(path: Path = CALIBRATION_FILE) -> list[str]:
    from bll_python.prompts import read_prompts

    return read_prompts(path) * CALIBRATION_SEEDS_PER_PROMPT


TRAINED_PRESETS = ("shapes",)


def trained_preset(name: str, root: Path = CHECKPOINTS_DIR) -> TrainedPreset | None:
    """The committed checkpoints behind preset ``name``, or None for a random-weight preset."""
    if name not in TRAINED_PRESETS:
        return None
    return TrainedPreset(shapes_sources(root), shapes_defaults(), calibration_prompts())
