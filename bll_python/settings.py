"""Per-request generation settings, their allowed ranges, and validation that names the field.

The ranges here are the single source for the BLS validation, the client's argument parser and
the README's serving contract table.
"""

from __future__ import annotations

import functools
import math
import unicodedata
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any, Mapping

import numpy as np


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
    # The refine schedule has ~teacher_steps / sigma entries and may not exceed the teacher's 1000
    # training timesteps (MAX_SCHEDULE_STEPS), so no sigma below 1/1000 can ever run.
    "sigma": Range(0.001, 1.0),
    "seed": Range(INT64_MIN, INT64_MAX),
    # Pixels; the deployment narrows this to what its engine profiles take (Deployment.resolve_size).
    "height": Range(8, 8192),
    "width": Range(8, 8192),
}
INTEGER_FIELDS = {"student_steps", "teacher_steps", "seed", "height", "width"}
# The VAE upsamples latents 8x: an image side is a multiple of 8.
SIZE_MULTIPLE = 8

# Prompts longer than 77 CLIP tokens are truncated (as diffusers does), so text past a few hundred
# words is never used; the byte cap only stops a client from making the tokenizer chew megabytes.
MAX_TEXT_BYTES = 16384

# The refine schedule (refine_schedule_length) is at most the teacher's number of training timesteps:
# past it a DPM-Solver++ schedule repeats timesteps, and its length is work and memory the request
# causes before any UNet runs (sigma=1e-6 with 100 teacher steps: 11.8 s and 3.1 GB building it).
MAX_SCHEDULE_STEPS = 1000

# Characters that print nothing: whitespace, controls and format characters (zero-width space and
# joiners, bidi marks, BOM), plus the "default ignorable" letters and marks that fonts draw as blank.
_BLANK_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"}
_BLANK_CODEPOINTS = frozenset(
    [0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0]
    + list(range(0x180B, 0x1810))
    + list(range(0xFE00, 0xFE10))
    + list(range(0xE0100, 0xE01F0))
)


def is_blank(text: str) -> bool:
    """True when ``text`` has no visible character (e.g. only spaces, zero-width spaces, Hangul fillers)."""
    return all(c.isspace() or ord(c) in _BLANK_CODEPOINTS or unicodedata.category(c) in _BLANK_CATEGORIES for c in text)


@functools.lru_cache(maxsize=None)
def min_refine_sigma(teacher_steps: int) -> float:
    """The smallest FP32 sigma whose refine schedule fits MAX_SCHEDULE_STEPS: teacher_steps / 1000,
    rounded up to the next FP32 value where FP32 rounding fell below it (the wire type of sigma)."""
    sigma = np.float32(teacher_steps / MAX_SCHEDULE_STEPS)
    while refine_schedule_length(teacher_steps, float(sigma)) > MAX_SCHEDULE_STEPS:
        sigma = np.nextafter(sigma, np.float32(np.inf))
    return float(sigma)


def refine_schedule_length(teacher_steps: int, sigma: float) -> int:
    """Smallest schedule length N whose img2img tail at ``strength=sigma`` is ``teacher_steps`` long.

    diffusers' img2img runs the last ``int(N * strength)`` of N steps, so N ~ teacher_steps / sigma.
    """
    n = max(teacher_steps, math.ceil(teacher_steps / sigma - 1e-9))
    while int(n * sigma) < teacher_steps:
        n += 1
    return n


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
    # An int is exact as it is: float() would round seeds above 2**53 and call them non-integers.
    if field in INTEGER_FIELDS and not isinstance(value, int) and float(value) != int(value):
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
    # Image size in pixels; None: the deployment's native size.
    height: int | None = None
    width: int | None = None
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
        for side in ("height", "width"):
            value = getattr(self, side)
            if value is not None:
                value = check_number(side, value)
                if value % SIZE_MULTIPLE:
                    raise SettingsError(side, f"got {value}; expected a multiple of {SIZE_MULTIPLE}")
                object.__setattr__(self, side, value)
        if not isinstance(self.exact_k, bool):
            raise SettingsError("exact_k", f"expected a boolean, got {type(self.exact_k).__name__} {self.exact_k!r}")
        try:
            object.__setattr__(self, "strategy", Strategy(self.strategy))
        except ValueError:
            allowed = ", ".join(s.value for s in Strategy)
            raise SettingsError("strategy", f"got {self.strategy!r}; allowed: {allowed}") from None
        if self.strategy is Strategy.REFINE:
            self._check_refine_schedule()

    def _check_refine_schedule(self) -> None:
        if refine_schedule_length(self.teacher_steps, self.sigma) > MAX_SCHEDULE_STEPS:
            raise SettingsError(
                "sigma",
                f"got {show(self.sigma)} with teacher_steps={self.teacher_steps}: the refine schedule would exceed "
                f"{MAX_SCHEDULE_STEPS} steps; allowed sigma >= teacher_steps / {MAX_SCHEDULE_STEPS} "
                f"(here {min_refine_sigma(self.teacher_steps):.9g} as FP32)",
            )

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
        # The size is part of the key: rows of different sizes never share a component call.
        return (self.guidance_scale, self.student_steps, self.teacher_steps, self.strategy, self.sigma, self.tau, self.k, self.height, self.width, self.exact_k)

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["strategy"] = self.strategy.value
        return d
