"""Budget rule of the supplement (section C): average UNet steps = student + (k / 100) * teacher.

Rows scoring below tau = the k-th percentile go to the teacher, so on calibration-like traffic a share
k / 100 of them pays the teacher's steps. Example from the paper: 5 student steps, 20 teacher steps
and a 15-step budget give k = 50 (5 + 0.5 * 20 = 15).
"""

from __future__ import annotations


class BudgetError(ValueError):
    """The budget cannot be met by any k in [0, 100]."""


def average_steps(k: float, student_steps: int, teacher_steps: int) -> float:
    """Expected UNet steps per image when rows below the k-th percentile reach the teacher."""
    if not 0.0 <= k <= 100.0:
        raise BudgetError(f"k must be in [0, 100], got {k}")
    return student_steps + (k / 100.0) * teacher_steps


def k_for_budget(budget: float, student_steps: int, teacher_steps: int) -> float:
    """The percentile k whose expected average steps equal ``budget``."""
    if student_steps < 1 or teacher_steps < 1:
        raise BudgetError(f"student_steps and teacher_steps must be >= 1, got {student_steps} and {teacher_steps}")
    low, high = student_steps, student_steps + teacher_steps
    if not low <= budget <= high:
        raise BudgetError(
            f"a budget of {budget:g} steps is outside [{low}, {high}]: every image pays the student's {student_steps} steps, "
            f"and at most all of them also pay the teacher's {teacher_steps}"
        )
    return 100.0 * (budget - student_steps) / teacher_steps
