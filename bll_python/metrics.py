"""Custom Prometheus metrics the BLS publishes on Triton's metrics port (``/metrics``).

``pb_utils`` is injected (it exists only inside the stub). Triton 2.51's Python backend has
``MetricFamily.HISTOGRAM`` (checked: the stage histogram is scraped with its buckets); on older
backends the stage latency falls back to ``_sum``/``_count`` counters, which still give a mean.
Every labelled series is created at start, so a scrape shows zeros rather than missing series.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Iterable, Mapping, Sequence

from bll_python.components import COMPONENTS
from bll_python.engines import ComponentError
from bll_python.restarts import launcher_restarts
from bll_python.serving import CANCELLED, INTERNAL, INVALID_ARG, UNAVAILABLE, error_status
from bll_python.settings import Route

STAGES = tuple(dict.fromkeys(c.stage for c in COMPONENTS.values()))
OUTCOMES = ("success", INVALID_ARG.lower(), CANCELLED.lower(), UNAVAILABLE.lower(), INTERNAL.lower())
LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
K_BUCKETS = [float(k) for k in range(0, 101, 10)]


class ServingMetrics:
    def __init__(self, pb_utils: ModuleType, components: Iterable[str] = (), environ: Mapping[str, str] | None = None, default_k: float = 50.0) -> None:
        self.default_k = default_k
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
        self.unet_steps = family("adaptive_unet_steps_total", "Denoising steps spent on produced images (student + teacher)", kinds.COUNTER).Metric(labels={})
        requests = family("adaptive_requests_total", "Requests answered, by outcome (success or the error status)", kinds.COUNTER)
        self.requests = {o: requests.Metric(labels={"outcome": o}) for o in OUTCOMES}
        self._component_errors = family("adaptive_component_errors_total", "Requests failed by a component model, by component", kinds.COUNTER)
        self.component_errors = {c: self._component_errors.Metric(labels={"component": c}) for c in components}
        restarts = family("adaptive_launcher_restarts", "Restarts of tritonserver by the launcher since it started, by reason", kinds.GAUGE)
        # A gauge set to the launcher's count: every BLS instance sets the same value, idempotently.
        self.restarts = {}
        for reason, count in launcher_restarts(os.environ if environ is None else environ).items():
            self.restarts[reason] = restarts.Metric(labels={"reason": reason})
            self.restarts[reason].set(count)
        # Incremented when an execution starts and decremented when it ends, in every BLS instance:
        # one series server-wide (as above), read back with value() as the load policy's signal.
        self.rows_in_flight = family("adaptive_rows_in_flight", "Rows in BLS executions now, server-wide (the load policy's signal)", kinds.GAUGE).Metric(labels={})
        # The load policy's state, shared by the BLS instances the same way (bll_python.load_policy.GaugeState).
        state = family("adaptive_load_policy_state", "Load policy state: level = steps toward the floor; the others are monotonic-clock times", kinds.GAUGE)
        self.policy_state = {f: state.Metric(labels={"field": f}) for f in ("level", "last_down", "busy_or_up_at")}
        self.lowered_rows = family("adaptive_k_lowered_rows_total", "Gated rows whose k the load policy lowered", kinds.COUNTER).Metric(labels={})
        self.histogram = hasattr(kinds, "HISTOGRAM")
        if self.histogram:
            stage = family("adaptive_stage_seconds", "Latency of each pipeline stage per batch", kinds.HISTOGRAM)
            self.stage = {s: stage.Metric(labels={"stage": s}, buckets=LATENCY_BUCKETS) for s in STAGES}
            self.effective_k = family("adaptive_effective_k", "The percentile the gate used, per gated row", kinds.HISTOGRAM).Metric(labels={}, buckets=K_BUCKETS)
        else:
            total = family("adaptive_stage_seconds_sum", "Total seconds per pipeline stage", kinds.COUNTER)
            count = family("adaptive_stage_seconds_count", "Batches per pipeline stage", kinds.COUNTER)
            self.stage_sum = {s: total.Metric(labels={"stage": s}) for s in STAGES}
            self.stage_count = {s: count.Metric(labels={"stage": s}) for s in STAGES}
            self.effective_k_sum = family("adaptive_effective_k_sum", "Sum of the percentiles the gate used, per gated row", kinds.COUNTER).Metric(labels={})
            self.effective_k_count = family("adaptive_effective_k_count", "Gated rows with a percentile", kinds.COUNTER).Metric(labels={})

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
        self.unet_steps.increment(int(result.unet_steps.sum()))
        if result.tau is not None:
            gated = len(result.routes)
            accepted = sum(1 for r in result.routes if r is Route.STUDENT)
            self.gated_rows.increment(gated)
            self.accepted_rows.increment(accepted)
            # Every BLS instance registers the same labelled series, and Triton keeps one series per
            # name and labels, so these counters are server-wide; a ratio kept in this process
            # would only describe this instance's rows.
            self.accept_rate.set(self.accepted_rows.value() / max(self.gated_rows.value(), 1.0))
        if result.k is not None:
            self._observe_k(rows, result.k, len(result.routes))

    def _observe_k(self, rows: Sequence[object], k: float, count: int) -> None:
        settings = getattr(rows[0], "settings", None) if rows else None
        requested = settings.k if settings is not None and settings.k is not None else self.default_k
        if k < requested:
            self.lowered_rows.increment(count)
        for _ in range(count):
            if self.histogram:
                self.effective_k.observe(k)
            else:
                self.effective_k_sum.increment(k)
                self.effective_k_count.increment(1)

    def observe_response(self, error: Exception | None) -> None:
        """Count one answered request: ``error`` is None on success."""
        outcome = "success" if error is None else error_status(error)[0].lower()
        self.requests[outcome].increment(1)
        if isinstance(error, ComponentError):
            # Bounded label set: the component names come from the deployment, not from requests.
            if error.component not in self.component_errors:
                self.component_errors[error.component] = self._component_errors.Metric(labels={"component": error.component})
            self.component_errors[error.component].increment(1)
