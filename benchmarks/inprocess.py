"""The in-process limit: the served ONNX graphs and session settings through AdaptivePipeline, no server.

The engines are built with the session options each served component reads from its
``config.pbtxt`` (intra-op threads, spinning), so a served / in-process ratio compares serving
overhead and nothing else. Requests at concurrency c are modelled as pipeline batches of c rows,
the batch the BLS would form if all c requests arrived together.
"""

from __future__ import annotations

import collections
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from benchmarks.modes import Mode
from benchmarks.workload import Workload
from bll_python.pipeline import AdaptivePipeline, BatchResult
from bll_python.settings import Route

@dataclass
class InprocessResult:
    batch: int
    rows: int
    seconds: float
    throughput: float  # images per second
    teacher_rows: int
    mean_unet_steps: float
    routes: dict[str, int]
    cpu_seconds: float = 0.0  # this process's CPU time over the run
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_ms_per_image(self) -> float:
        return self.cpu_seconds / self.rows * 1000

    @property
    def teacher_share(self) -> float:
        return self.teacher_rows / self.rows

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "teacher_share": self.teacher_share, "cpu_ms_per_image": self.cpu_ms_per_image}


def run_inprocess(pipe: AdaptivePipeline, mode: Mode, workload: Workload, batch: int, rows: int) -> InprocessResult:
    """``rows`` images in pipeline batches of ``batch``, over the workload in order."""
    settings = mode.settings(pipe.deployment.defaults)
    stages: dict[str, float] = collections.defaultdict(float)

    def observe(stage: str, seconds: float, _rows: int) -> None:
        stages[stage] += seconds

    results: list[BatchResult] = []
    cpu_start = time.process_time()
    start = time.perf_counter()
    for first in range(0, rows, batch):
        prompts, seeds = workload.rows(first, min(batch, rows - first))
        results.append(pipe(prompts, seeds, settings, on_stage=observe))
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    routes = collections.Counter(r.value for res in results for r in res.routes)
    steps = np.concatenate([res.unet_steps for res in results])
    teacher = sum(1 for res in results for r in res.routes if r is not Route.STUDENT)
    return InprocessResult(
        batch=batch,
        rows=rows,
        seconds=seconds,
        throughput=rows / seconds,
        teacher_rows=teacher,
        mean_unet_steps=float(steps.mean()),
        routes=dict(routes),
        cpu_seconds=cpu_seconds,
        stage_seconds=dict(stages),
    )


def warm_up(pipe: AdaptivePipeline, workload: Workload, batch: int) -> None:
    """One batch through every engine (the teacher too) at the largest batch measured."""
    from bll_python.settings import GenerationSettings

    prompts, seeds = workload.rows(0, batch)
    everyone_to_teacher = GenerationSettings.from_mapping({"strategy": "refine", "tau": 1e6}, pipe.deployment.defaults)
    pipe(prompts, seeds, everyone_to_teacher)
