"""Triton's own accounting, per model, between two snapshots: where a served image spends its time.

``get_inference_statistics`` gives, per model, cumulative request counts and nanoseconds in the queue
and in compute (input, infer, output), plus inference (rows) and execution (batches) counts. The BLS
``compute_infer`` contains its calls to the components; what it has beyond the components' own
request time is the BLS overhead: its Python work and the round trips of its BLS requests.
The BLS's stage timers (``adaptive_stage_seconds`` on /metrics) split its time by pipeline stage.
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from bll_python.components import COMPONENT_NAMES as COMPONENTS
from bll_python.layout import BLS_MODEL



@dataclass
class ModelStats:
    requests: int = 0  # successful requests
    rows: int = 0  # inference_count: batch rows
    executions: int = 0  # execution_count: model executions (batches)
    success_ns: int = 0  # end-to-end request time inside the server
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    # Compute time counted once per execution (batch_stats); the fields above count it once per
    # request, so a batch of 4 requests adds its execution time 4 times there.
    execution_compute_ns: int = 0

    def __sub__(self, other: "ModelStats") -> "ModelStats":
        return ModelStats(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    @property
    def compute_ns(self) -> int:
        return self.compute_input_ns + self.compute_infer_ns + self.compute_output_ns

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ns(stats: Mapping[str, Any], key: str) -> int:
    return int(stats.get(key, {}).get("ns", 0))


def snapshot(client: Any) -> dict[str, ModelStats]:
    """Cumulative stats of every model, from a ``tritonclient.grpc`` or ``.http`` client."""
    raw = client.get_inference_statistics()
    if not isinstance(raw, dict):  # grpc returns a protobuf unless as_json
        raw = client.get_inference_statistics(as_json=True)
    out = {}
    for model in raw["model_stats"]:
        s = model.get("inference_stats", {})
        out[model["name"]] = ModelStats(
            requests=int(s.get("success", {}).get("count", 0)),
            rows=int(model.get("inference_count", 0)),
            executions=int(model.get("execution_count", 0)),
            success_ns=_ns(s, "success"),
            queue_ns=_ns(s, "queue"),
            compute_input_ns=_ns(s, "compute_input"),
            compute_infer_ns=_ns(s, "compute_infer"),
            compute_output_ns=_ns(s, "compute_output"),
            execution_compute_ns=sum(_ns(b, k) for b in model.get("batch_stats", []) for k in ("compute_input", "compute_infer", "compute_output")),
        )
    return out


def delta(after: Mapping[str, ModelStats], before: Mapping[str, ModelStats]) -> dict[str, ModelStats]:
    return {name: after[name] - before.get(name, ModelStats()) for name in after}


@dataclass
class Breakdown:
    """Milliseconds per image over one measurement: execution time is shared by a batch's rows."""

    images: int
    bls_queue_ms: float  # mean wait of a request before its execution (a latency, not a cost)
    bls_compute_ms: float  # BLS execution time per image
    bls_overhead_ms: float  # BLS execution time not spent in component requests, per image
    bls_overhead_per_call_ms: float
    component_calls_per_image: float
    mean_bls_batch: float
    components: dict[str, dict[str, float]]  # name -> queue_ms, compute_ms, calls, rows, executions per image
    # Per component: rows per execution (batch fill) and BLS calls per execution (calls merged by the
    # component's dynamic batcher; above 1 means executions held rows of several requests).
    fill: dict[str, dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def breakdown(stats: Mapping[str, ModelStats]) -> Breakdown:
    """Per-image split of a measurement.

    The BLS overhead subtracts the components' whole request time (queue, compute and the backend's
    hand-off to its stub) from the BLS's execution time: its own Python work and round trips. With
    several BLS instances in flight both sides add up over the instances, so it stays a per-image
    cost (not a latency).
    """
    bls = stats.get(BLS_MODEL, ModelStats())
    images = max(bls.rows, 1)
    per_image = lambda ns: ns / images / 1e6  # noqa: E731
    components = {}
    calls = 0
    component_request_ns = 0
    for name in COMPONENTS:
        s = stats.get(name, ModelStats())
        calls += s.requests
        component_request_ns += s.success_ns
        components[name] = {
            "queue_ms": per_image(s.queue_ns),
            "compute_ms": per_image(s.execution_compute_ns),
            "calls": s.requests / images,
            "rows": s.rows / images,
            "executions": s.executions / images,
        }
    overhead_ns = bls.execution_compute_ns - component_request_ns
    fill = {
        name: {"rows_per_execution": s.rows / max(s.executions, 1), "calls_per_execution": s.requests / max(s.executions, 1)}
        for name, s in ((n, stats.get(n, ModelStats())) for n in COMPONENTS)
        if s.executions
    }
    return Breakdown(
        images=bls.rows,
        bls_queue_ms=bls.queue_ns / max(bls.requests, 1) / 1e6,
        bls_compute_ms=per_image(bls.execution_compute_ns),
        bls_overhead_ms=per_image(overhead_ns),
        bls_overhead_per_call_ms=overhead_ns / max(calls, 1) / 1e6,
        component_calls_per_image=calls / images,
        mean_bls_batch=bls.rows / max(bls.executions, 1),
        components=components,
        fill=fill,
    )


def unet_rows(stats: Mapping[str, ModelStats]) -> tuple[int, int, int]:
    """(images, student UNet rows, teacher UNet rows) of a measurement."""
    return stats[BLS_MODEL].rows, stats.get("unet_student", ModelStats()).rows, stats.get("unet_teacher", ModelStats()).rows


_SAMPLE = re.compile(r'^(adaptive_stage_seconds_(?:sum|count))\{stage="(\w+)"\}\s+([0-9.eE+-]+)$')


def stage_seconds(metrics_url: str, timeout_s: float = 10.0) -> dict[str, dict[str, float]]:
    """``{stage: {"sum": seconds, "count": batches}}`` from the BLS's custom metrics."""
    url = metrics_url if metrics_url.startswith("http") else f"http://{metrics_url}"
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout_s) as r:
        text = r.read().decode()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out.setdefault(m[2], {})[m[1].rsplit("_", 1)[1]] = float(m[3])
    return out


def stage_delta(after: Mapping[str, Mapping[str, float]], before: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Seconds per stage between two ``stage_seconds`` readings."""
    return {s: after[s].get("sum", 0.0) - before.get(s, {}).get("sum", 0.0) for s in after}
