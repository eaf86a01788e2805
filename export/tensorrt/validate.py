"""TensorRT engines against ONNX Runtime on the same inputs (Polygraphy's comparator).

The reference is the FP32 ONNX graph on ONNX Runtime's CPU provider: the graph the engine was built
from, on the runtime the CPU deployment serves with. Inputs are the spec's sample inputs at each
distinct batch size of the profile (min, opt, max), so every profile corner runs once.

Tolerances are per component (its record's) because the outputs live on different scales; an element
fails only when it exceeds both ``atol`` and ``rtol`` (Polygraphy's ``elemwise`` check). NaN or inf in
an engine output always fails: that is what an FP16 overflow looks like.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER

from bll_python.components import COMPONENTS
from bll_python.layout import onnx_path, plan_path
from bll_python.precision import DEFAULT_TOLERANCE, Tolerance
from bll_python.specs import ComponentSpec
from export.tensorrt.availability import require_tensorrt

# Each component's tolerance, from its record.
TOLERANCES: dict[str, Tolerance] = {name: c.tolerance for name, c in COMPONENTS.items()}

REFERENCE, CANDIDATE = "onnxruntime", "tensorrt"


@dataclass
class OutputDiff:
    max_absdiff: float
    max_reldiff: float
    mean_absdiff: float
    finite: bool
    passed: bool


@dataclass
class ValidationReport:
    component: str
    reference: str
    candidate: str
    tolerance: Tolerance
    passed: bool
    iterations: list[dict[str, Any]] = field(default_factory=list)  # {"batch": b, "outputs": {name: OutputDiff}}

    def to_json(self) -> dict[str, Any]:
        return _strict_json(asdict(self))

    def __str__(self) -> str:
        worst = max((o.max_absdiff for it in self.iterations for o in it["outputs"].values()), default=float("nan"))
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict} {self.component}: max |{self.candidate} - {self.reference}| = {worst:.3g} (atol {self.tolerance.atol:g}, rtol {self.tolerance.rtol:g})"


def validation_feeds(spec: ComponentSpec, batches: Sequence[int] | None = None, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One feed per batch size; by default each distinct profile corner (min, opt, max)."""
    r = spec.profile["B"]
    sizes = sorted({r.min, r.opt, r.max}) if batches is None else list(batches)
    return [spec.sample_inputs(b, seed=seed + b) for b in sizes]


def compare_runners(
    spec: ComponentSpec,
    reference: Any,
    candidate: Any,
    feeds: Iterable[Mapping[str, np.ndarray]],
    tolerance: Tolerance | None = None,
) -> ValidationReport:
    """Run both Polygraphy runners on ``feeds`` and compare every output of every iteration."""
    tol = tolerance or TOLERANCES.get(spec.name, DEFAULT_TOLERANCE)
    feeds = [dict(f) for f in feeds]
    with G_LOGGER.verbosity(G_LOGGER.ERROR):  # its per-output histograms would drown the summary
        results = Comparator.run([reference, candidate], data_loader=feeds)
        accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=tol.atol, rtol=tol.rtol, check_shapes=True))
    pair = (reference.name, candidate.name)
    per_iteration = accuracy[0][pair]
    candidate_outputs = results[candidate.name]
    report = ValidationReport(spec.name, reference.name, candidate.name, tol, passed=True)
    for feed, compared, outputs in zip(feeds, per_iteration, candidate_outputs):
        diffs = {}
        for name in spec.output_names:
            result = compared.get(name)
            finite = bool(np.all(np.isfinite(np.asarray(outputs[name]))))
            ok = bool(result) and finite
            diffs[name] = OutputDiff(
                max_absdiff=_num(getattr(result, "max_absdiff", None)),
                max_reldiff=_num(getattr(result, "max_reldiff", None)),
                mean_absdiff=_num(getattr(result, "mean_absdiff", None)),
                finite=finite,
                passed=ok,
            )
            report.passed &= ok
        report.iterations.append({"batch": int(next(iter(feed.values())).shape[0]), "outputs": diffs})
    return report


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _strict_json(value: Any) -> Any:
    # NaN/inf (an overflowed engine) become null: strict JSON readers reject the bare tokens.
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def onnxruntime_runner(onnx: Path, name: str = REFERENCE):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return OnnxrtRunner(SessionFromOnnx(str(onnx), providers=["CPUExecutionProvider"]), name=name)


def tensorrt_runner(plan: Path, name: str = CANDIDATE):
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(BytesFromPath(str(plan))), name=name)


def validate_engine(spec: ComponentSpec, onnx: Path, plan: Path, *, tolerance: Tolerance | None = None, batches: Sequence[int] | None = None) -> ValidationReport:
    """The engine at ``plan`` against its ONNX graph on ONNX Runtime (needs tensorrt and a GPU)."""
    require_tensorrt()
    return compare_runners(spec, onnxruntime_runner(onnx), tensorrt_runner(plan), validation_feeds(spec, batches), tolerance)


def validate_repository(
    source: Path,
    target: Path,
    specs: Mapping[str, ComponentSpec],
    *,
    tolerances: Mapping[str, Tolerance] | None = None,
    batches: Sequence[int] | None = None,
) -> list[ValidationReport]:
    tolerances = tolerances or TOLERANCES
    return [
        validate_engine(spec, onnx_path(source, name), plan_path(target, name), tolerance=tolerances.get(name), batches=batches)
        for name, spec in specs.items()
    ]


def write_report(reports: Sequence[ValidationReport], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"passed": all(r.passed for r in reports), "components": {r.component: r.to_json() for r in reports}}
    path.write_text(json.dumps(body, indent=2))
    return path
