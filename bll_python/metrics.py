"""Custom Prometheus metrics the BLS publishes on Triton's metrics port.

``pb_utils`` is injected (it exists only inside the stub). Histograms need a Python backend that has
``MetricFamily.HISTOGRAM``; on older ones the stage latency is published as ``_sum``/``_count``
counters instead, which Prometheus turns into a mean just as well.
"""

from __future__ import annotations

from types import ModuleType
from typing import Sequence

from bll_python.settings import Route

STAGES = ("text", "student", "decode", "reward", "teacher")
LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class ServingMetrics:
    def __init__(self, pb_utils: ModuleType) -> None:
        # A Metric is only valid while its MetricFamily lives, so the families are kept here.
        self._families: list[object] = []

        def family(name: str, doc: str, kind: object) -> object:
            f = pb_utils.MetricFamily(name, doc, kind)
            self._families.append(f)
            return f

        kinds = pb_utils.MetricFamily
        rows = family("adaptive_rows_total", "Images produced, by route", kinds.COUNTER)
        self.rows = {r.value: rows.Metric(labels={"route": r.value}) for r in Route}
        self.teacher_rows = family("adaptive_teacher_rows_total", "Rows sent to the teacher UNet", kinds.COUNTER).Metric(labels={})
        self.gated_rows = family("adaptive_gated_rows_total", "Rows that went through the ImageReward gate", kinds.COUNTER).Metric(labels={})
        self.accepted_rows = family("adaptive_accepted_rows_total", "Gated rows the student kept", kinds.COUNTER).Metric(labels={})
        self.accept_rate = family("adaptive_accept_rate", "Accepted / gated rows since start", kinds.GAUGE).Metric(labels={})
        errors = family("adaptive_errors_total", "Failed requests, by error kind", kinds.COUNTER)
        self._errors_family = errors
        self.errors: dict[str, object] = {}
        self.histogram = hasattr(kinds, "HISTOGRAM")
        if self.histogram:
            stage = family("adaptive_stage_seconds", "Latency of each pipeline stage per batch", kinds.HISTOGRAM)
            self.stage = {s: stage.Metric(labels={"stage": s}, buckets=LATENCY_BUCKETS) for s in STAGES}
        else:
            total = family("adaptive_stage_seconds_sum", "Total seconds per pipeline stage", kinds.COUNTER)
            count = family("adaptive_stage_seconds_count", "Batches per pipeline stage", kinds.COUNTER)
            self.stage_sum = {s: total.Metric(labels={"stage": s}) for s in STAGES}
            self.stage_count = {s: count.Metric(labels={"stage": s}) for s in STAGES}
        self._gated = 0
        self._accepted = 0

    def observe_stage(self, stage: str, seconds: float, rows: int) -> None:
        if self.histogram:
            self.stage[stage].observe(seconds)
        else:
            self.stage_sum[stage].increment(seconds)
            self.stage_count[stage].increment(1)

    def observe_batch(self, rows: Sequence[object], result) -> None:
        for route in result.routes:
            self.rows[route.value].increment(1)
        self.teacher_rows.increment(len(result.teacher_rows))
        if result.tau is not None:
            gated = len(result.routes)
            accepted = sum(1 for r in result.routes if r is Route.STUDENT)
            self.gated_rows.increment(gated)
            self.accepted_rows.increment(accepted)
            self._gated += gated
            self._accepted += accepted
            self.accept_rate.set(self._accepted / self._gated)

    def observe_error(self, exc: Exception) -> None:
        kind = type(exc).__name__
        if kind not in self.errors:
            self.errors[kind] = self._errors_family.Metric(labels={"kind": kind})
        self.errors[kind].increment(1)
