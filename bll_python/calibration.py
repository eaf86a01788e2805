"""Calibrating the gate: student samples scored by ImageReward, generated exactly as the server would.

``tau`` for percentile k is the k-th percentile of these scores (Algorithm 1's calibration). The
export stores all percentiles k = 0..100 in the manifest; ``benchmarks.calibrate`` recalibrates a
repository and measures how stable tau is. Prompt i gets seed ``first_seed + i``, so both agree on
the same prompts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from bll_python.deployment import Calibration
from bll_python.pipeline import AdaptivePipeline
from bll_python.settings import GenerationSettings, Strategy

Progress = Callable[[int, int], None]  # (samples scored, samples wanted)


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
    defaults: GenerationSettings | None = None,
    batch: int = 8,
    first_seed: int = 0,
    progress: Progress | None = None,
) -> ScoredSamples:
    """ImageReward of the student sample of each prompt, with ``defaults`` (the pipeline's) gate off."""
    settings = student_settings(defaults or pipe.deployment.defaults)
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


def calibrate(
    pipe: AdaptivePipeline,
    prompts: Sequence[str],
    *,
    defaults: GenerationSettings | None = None,
    batch: int = 8,
    progress: Progress | None = None,
) -> tuple[Calibration, ScoredSamples]:
    """The calibration of ``pipe`` on ``prompts``, and the scored samples it came from."""
    settings = student_settings(defaults or pipe.deployment.defaults)
    samples = score_student_samples(pipe, prompts, defaults=settings, batch=batch, progress=progress)
    calibration = Calibration(
        percentiles=percentiles(samples.scores), prompts=len(prompts), settings=settings.as_dict(), student_seconds_per_image=samples.seconds_per_sample
    )
    return calibration, samples
