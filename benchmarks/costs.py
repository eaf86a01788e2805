"""What adaptive serving should save over teacher-only, predicted two ways.

- From UNet evaluations (the paper's accounting): teacher_steps / mean UNet steps per image of the
  mode. A CFG step counts once, as in the ``unet_steps`` output.
- From a cost model with every component: the in-process per-row cost of a UNet step (CFG rows
  included), a decode, a reward pass and the text encoder, times how often each mode runs them.
  It shows what the step count leaves out: adaptive modes score every image and decode the teacher's
  rows a second time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from bll_python.deployment import Deployment
from bll_python.settings import GenerationSettings


def cfg_factor(deployment: Deployment, settings: GenerationSettings, teacher: bool) -> int:
    """UNet rows per image per step: 2 under classifier-free guidance (the pipeline's rule)."""
    if settings.guidance_scale <= 1.0:
        return 1
    if teacher:
        return 2
    return 2 if deployment.student_uses_cfg and deployment.timestep_cond_dim is None else 1


def steps_from_unet_rows(
    deployment: Deployment, settings: GenerationSettings, images: int, student_rows: int, teacher_rows: int
) -> tuple[float, float]:
    """(mean UNet steps per image, share of images that reached the teacher) from component row counts."""
    student_steps = student_rows / cfg_factor(deployment, settings, teacher=False) / max(images, 1)
    teacher_steps = teacher_rows / cfg_factor(deployment, settings, teacher=True) / max(images, 1)
    return student_steps + teacher_steps, teacher_steps / settings.teacher_steps


def predicted_speedup_from_steps(teacher_mean_steps: float, mode_mean_steps: float) -> float:
    return teacher_mean_steps / mode_mean_steps


@dataclass
class UnitCosts:
    """Seconds per image for one pass of each stage, at one batch size (in-process)."""

    text: float
    student_step: float
    teacher_step: float
    decode: float
    reward: float

    @classmethod
    def from_stages(
        cls,
        student_only: Mapping[str, float],
        teacher_only: Mapping[str, float],
        rows: int,
        student_steps: int,
        teacher_steps: int,
    ) -> "UnitCosts":
        """From the stage seconds of a student-only and a teacher-only run of ``rows`` images each."""
        both = lambda stage: (student_only.get(stage, 0.0) + teacher_only.get(stage, 0.0)) / (2 * rows)  # noqa: E731
        return cls(
            text=both("text"),
            student_step=student_only["student"] / rows / student_steps,
            teacher_step=teacher_only["teacher"] / rows / teacher_steps,
            decode=both("decode"),
            reward=both("reward"),
        )

    def image_cost(self, student_steps: float, teacher_steps: float, teacher_share: float, uses_student: bool) -> float:
        """Expected seconds per image; a row that reaches the teacher after the student is decoded twice."""
        cost = self.text + self.reward + self.decode + teacher_steps * teacher_share * self.teacher_step
        if uses_student:
            cost += student_steps * self.student_step + teacher_share * self.decode
        return cost

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
