"""Per-request generation settings, their allowed ranges, and validation that names the field.

The ranges here are the single source for the BLS validation, the client's argument parser and
the README's serving contract table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any, Mapping


class Strategy(str, Enum):
    REFINE = "refine"
    REGENERATE = "regenerate"
    STUDENT_ONLY = "student_only"
    TEACHER_ONLY = "teacher_only"

    @property
    def uses_student(self) -> bool:
        return self is not Strategy.TEACHER_ONLY

    @property
    def is_adaptive(self) -> bool:
        return self in (Strategy.REFINE, Strategy.REGENERATE)


class Route(str, Enum):
    STUDENT = "student"
    REFINED = "refined"
    REGENERATED = "regenerated"
    TEACHER = "teacher"


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    low_open: bool = False

    def contains(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


LIMITS: dict[str, Range] = {
    "guidance_scale": Range(0.0, 30.0),
    "student_steps": Range(1, 50),
    "teacher_steps": Range(1, 100),
    "tau": Range(-1e6, 1e6),
    "k": Range(0.0, 100.0),
    "sigma": Range(0.0, 1.0, low_open=True),
    "seed": Range(INT64_MIN, INT64_MAX),
}
INTEGER_FIELDS = {"student_steps", "teacher_steps", "seed"}

# Prompts longer than 77 CLIP tokens are truncated (as diffusers does), so text past a few hundred
# words is never used; the byte cap only stops a client from making the tokenizer chew megabytes.
MAX_TEXT_BYTES = 16384


class SettingsError(ValueError):
    """A request field outside its allowed range; ``field`` names it for the client."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


def show(value: Any) -> str:
    """A value as a client would have typed it (FP32 inputs arrive as 0.10000000149011612)."""
    return f"{value:.7g}" if isinstance(value, float) else repr(value)


def check_number(field: str, value: Any) -> float | int:
    """Return ``value`` if it is a finite number inside ``LIMITS[field]``, else raise SettingsError."""
    limit = LIMITS[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(field, f"expected a number, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and math.isnan(value):
        raise SettingsError(field, f"got NaN; allowed range {limit}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(field, f"got {show(value)}; allowed range {limit}")
    if field in INTEGER_FIELDS and float(value) != int(value):
        raise SettingsError(field, f"expected an integer, got {show(value)}")
    if not limit.contains(value):
        raise SettingsError(field, f"got {show(value)}; allowed range {limit}")
    return int(value) if field in INTEGER_FIELDS else float(value)


@dataclass(frozen=True)
class GenerationSettings:
    """Settings shared by all rows of one pipeline batch.

    Exactly one of ``tau`` and ``k`` may be set; with neither, the deployment's calibrated
    default ``tau`` applies. ``sigma`` is the refinement rollback strength (img2img ``strength``).
    """

    guidance_scale: float = 7.5
    student_steps: int = 4
    teacher_steps: int = 10
    strategy: Strategy = Strategy.REFINE
    sigma: float = 0.7
    tau: float | None = None
    k: float | None = None
    # The deployment's load policy may lower k under load; an exact request keeps its k.
    exact_k: bool = False

    def __post_init__(self) -> None:
        for name in ("guidance_scale", "student_steps", "teacher_steps", "sigma"):
            object.__setattr__(self, name, check_number(name, getattr(self, name)))
        if self.tau is not None and self.k is not None:
            raise SettingsError("tau", f"got tau={show(self.tau)} and k={show(self.k)}; give tau or k, not both")
        if self.tau is not None:
            object.__setattr__(self, "tau", check_number("tau", self.tau))
        if self.k is not None:
            object.__setattr__(self, "k", check_number("k", self.k))
        if not isinstance(self.exact_k, bool):
            raise SettingsError("exact_k", f"expected a boolean, got {type(self.exact_k).__name__} {self.exact_k!r}")
        try:
            object.__setattr__(self, "strategy", Strategy(self.strategy))
        except ValueError:
            allowed = ", ".join(s.value for s in Strategy)
            raise SettingsError("strategy", f"got {self.strategy!r}; allowed: {allowed}") from None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], defaults: "GenerationSettings | None" = None) -> "GenerationSettings":
        """Build from request fields; fields not given fall back to ``defaults``."""
        base = defaults or cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(unknown[0], f"unknown setting; known: {sorted(known)}")
        given = dict(values)
        # A request that picks its own tau or k replaces the default gate entirely.
        if "tau" in given or "k" in given:
            base = replace(base, tau=None, k=None)
        return replace(base, **given)

    def key(self) -> tuple:
        """Rows whose settings share this key can run as one batch."""
        return (self.guidance_scale, self.student_steps, self.teacher_steps, self.strategy, self.sigma, self.tau, self.k, self.exact_k)

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["strategy"] = self.strategy.value
        return d
