"""Choosing tau so that a batch really has rows on both sides of the cut."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from bll_python.settings import GenerationSettings

PROMPTS = ["a red fox in the snow", "an old lighthouse at dusk, oil painting", "a bowl of ramen", "two cats on a sofa", "a koi pond", "a knight in armor"]
SEEDS = [3, 1, 4, 1, 5, 9]
SETTINGS = GenerationSettings(guidance_scale=7.5, student_steps=2, teacher_steps=3, sigma=0.6, strategy="refine")
REJECTED = 2
# Scores of the same rows differ by ~1e-6 between torch, ONNX Runtime and the server; tau keeps
# far more than that from every score, so each engine puts every row on the same side.
MARGIN = 1e-3


@dataclass
class MixedBatch:
    prompts: list[str]
    seeds: list[int]
    settings: GenerationSettings  # tau set
    scores: np.ndarray  # the student's, from student_only
    rejected: list[int] = field(default_factory=list)

    @property
    def tau(self) -> float:
        return float(self.settings.tau)

    @property
    def accepted(self) -> list[int]:
        return [i for i in range(len(self.prompts)) if i not in self.rejected]


def tau_between(scores: Sequence[float], below: int) -> float:
    """The midpoint between the ``below``-th and the next sorted score: exactly ``below`` rows under it."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    tau = float((ordered[below - 1] + ordered[below]) / 2)
    assert int(np.sum(np.asarray(scores) < tau)) == below, "tied scores: pick other rows"
    assert np.min(np.abs(np.asarray(scores) - tau)) > MARGIN, f"a score lies within {MARGIN} of tau: pick other rows"
    return tau


def mixed_batch(pipeline, prompts: Sequence[str] = PROMPTS, seeds: Sequence[int] = SEEDS, settings: GenerationSettings = SETTINGS, below: int = REJECTED) -> MixedBatch:
    scores = pipeline(list(prompts), list(seeds), replace(settings, strategy="student_only")).scores
    tau = tau_between(scores, below)
    rejected = [i for i, s in enumerate(scores) if s < tau]
    assert 0 < len(rejected) < len(prompts) - len(rejected), "more accepted rows than rejected ones, and some of each"
    return MixedBatch(list(prompts), list(seeds), replace(settings, tau=tau), scores, rejected)
