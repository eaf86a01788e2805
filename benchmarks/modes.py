"""The serving modes a benchmark compares: student only, teacher only, and adaptive at several k."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from bll_python.settings import GenerationSettings, Strategy


@dataclass(frozen=True)
class Mode:
    name: str
    strategy: Strategy
    k: float | None = None

    @property
    def adaptive(self) -> bool:
        return self.strategy.is_adaptive

    def request_fields(self) -> dict[str, Any]:
        """The contract fields a request of this mode sets; everything else is the server's default."""
        fields: dict[str, Any] = {"strategy": self.strategy.value}
        if self.k is not None:
            fields["k"] = float(self.k)
        return fields

    def settings(self, defaults: GenerationSettings) -> GenerationSettings:
        """What the BLS would run for such a request (``GenerationSettings.from_mapping`` semantics)."""
        return GenerationSettings.from_mapping(self.request_fields(), defaults)


def _adaptive(strategy: Strategy, k: int) -> Mode:
    return Mode(f"{strategy.value}_k{k}", strategy, float(k))


MODES: tuple[Mode, ...] = (
    Mode("student_only", Strategy.STUDENT_ONLY),
    Mode("teacher_only", Strategy.TEACHER_ONLY),
    *(_adaptive(Strategy.REFINE, k) for k in (30, 50, 70)),
    *(_adaptive(Strategy.REGENERATE, k) for k in (30, 50, 70)),
)
BY_NAME = {m.name: m for m in MODES}
BASELINE = "teacher_only"


def select_modes(names: Iterable[str] | None) -> list[Mode]:
    if not names:
        return list(MODES)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; choose from {list(BY_NAME)}")
    return [BY_NAME[n] for n in names]
