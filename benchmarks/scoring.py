"""Student samples scored by ImageReward, generated exactly as the server would generate them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from bll_python.pipeline import AdaptivePipeline
from bll_python.settings import GenerationSettings, Strategy


def student_settings(defaults: GenerationSettings) -> GenerationSettings:
    """The serving defaults (guidance, steps, sampler) with the gate switched off."""
    return GenerationSettings(**{**defaults.as_dict(), "strategy": Strategy.STUDENT_ONLY.value, "tau": None, "k": None})


@dataclass
class ScoredSamples:
    scores: np.ndarray  # float32 [n], in prompt order
    seconds: float  # wall time of generation and scoring

    @property
    def seconds_per_sample(self) -> float:
        return self.seconds / max(len(self.scores), 1)


def score_student_samples(
    pipe: AdaptivePipeline,
    prompts: Sequence[str],
    *,
    batch: int = 8,
    first_seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> ScoredSamples:
    """ImageReward of the student sample of each prompt; prompt i gets seed ``first_seed + i``.

    The seed convention is ``export.build.calibrate``'s, so both calibrations agree on the same prompts.
    """
    settings = student_settings(pipe.deployment.defaults)
    scores: list[float] = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = list(prompts[i : i + batch])
        result = pipe(chunk, seeds=list(range(first_seed + i, first_seed + i + len(chunk))), settings=settings)
        scores.extend(result.scores.tolist())
        if progress:
            progress(len(scores), len(prompts))
    return ScoredSamples(np.asarray(scores, dtype=np.float32), time.perf_counter() - start)


def percentiles(scores: np.ndarray) -> list[float]:
    """Percentiles k = 0..100 (numpy's linear interpolation), as ``Calibration.percentiles`` stores them."""
    return np.percentile(np.asarray(scores, dtype=np.float64), np.arange(101)).tolist()
