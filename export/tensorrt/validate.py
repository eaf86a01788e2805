"""Engines (or FP16 graphs) against the FP32 graph on ONNX Runtime, on the same inputs.

The reference is the FP32 ONNX graph on ONNX Runtime's CPU provider: the graph the engine was built
from, on the runtime the CPU deployment serves with. Inputs are the spec's sample inputs at each
distinct batch size of the profile (min, opt, max), so every profile corner runs once.

The comparison is our own (numpy), not Polygraphy's comparator: its API differs between the
Polygraphy of TensorRT 10.5 and 0.53, and it takes the relative error against the *second* runner,
i.e. the engine under test. Here the relative error is ``|candidate - reference| / |reference|``.
Runners are used only through ``activate``/``infer``/``deactivate`` (``with runner:``), which both
Polygraphy versions have. Tolerances are per component (its record's); an element fails only when it
exceeds both ``atol`` and ``rtol``. NaN or inf in a candidate output always fails: that is what an
FP16 overflow looks like.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from bll_python.components import COMPONENTS
from bll_python.layout import onnx_path, plan_path
from bll_python.precision import DEFAULT_TOLERANCE, Tolerance
from bll_python.specs import ComponentSpec
from export.tensorrt.availability import require_tensorrt

# Each component's tolerance, from its record.
TOLERANCES: dict[str, Tolerance] = {name: c.tolerance for name, c in COMPONENTS.items()}

REFERENCE, CANDIDATE = "onnxruntime", "tensorrt"
# Keeps |reference| ~ 0 from making every relative error infinite.
_REL_EPS = 1e-6


@dataclass
class OutputDiff:
    max_absdiff: float
    max_reldiff: float  # against the reference
    mean_absdiff: float
    failing: int  # elements beyond both atol and rtol
    finite: bool
    passed: bool


def compare_output(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> OutputDiff:
    """One output of one run: the candidate against the FP32 reference."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        return OutputDiff(float("nan"), float("nan"), float("nan"), int(ref.size), bool(np.isfinite(cand).all()), False)
    finite = bool(np.isfinite(cand).all())
    absdiff = np.abs(cand - ref)
    reldiff = absdiff / (np.abs(ref) + _REL_EPS)
    failing = int(np.count_nonzero(~((absdiff <= tolerance.atol) | (reldiff <= tolerance.rtol))))
    return OutputDiff(
        max_absdiff=float(np.nanmax(absdiff)) if absdiff.size else 0.0,
        max_reldiff=float(np.nanmax(reldiff)) if reldiff.size else 0.0,
        mean_absdiff=float(np.nanmean(absdiff)) if absdiff.size else 0.0,
        failing=failing,
        finite=finite,
        passed=finite and failing == 0,
    )


@dataclass
class ValidationReport:
    component: str
    reference: str
    candidate: str
    tolerance: Tolerance
    passed: bool
    iterations: list[dict[str, Any]] = field(default_factory=list)  # {"batch": b, "outputs": {name: OutputDiff}}
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return _strict_json(asdict(self))

    @property
    def worst(self) -> OutputDiff | None:
        diffs = [o for it in self.iterations for o in it["outputs"].values()]
        return max(diffs, key=lambda o: (not o.finite, o.max_absdiff), default=None)

    def __str__(self) -> str:
        worst = self.worst
        verdict = "PASS" if self.passed else "FAIL"
        if worst is None:
            return f"{verdict} {self.component}: no outputs compared"
        finite = "finite" if all(o.finite for it in self.iterations for o in it["outputs"].values()) else "NaN/inf"
        return (
            f"{verdict} {self.component}: {finite}, max |{self.candidate} - {self.reference}| = {worst.max_absdiff:.3g}, "
            f"max rel {worst.max_reldiff:.3g} (atol {self.tolerance.atol:g}, rtol {self.tolerance.rtol:g})"
        )


def validation_feeds(spec: ComponentSpec, batches: Sequence[int] | None = None, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One feed per batch size; by default each distinct profile corner (min, opt, max)."""
    r = spec.profile["B"]
    sizes = sorted({r.min, r.opt, r.max}) if batches is None else list(batches)
    return [spec.sample_inputs(b, seed=seed + b) for b in sizes]


def run_feeds(runner: Any, feeds: Iterable[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Outputs of a Polygraphy runner for each feed (``with runner: runner.infer(feed)``)."""
    with runner:
        return [{k: np.array(v) for k, v in runner.infer(dict(feed)).items()} for feed in feeds]


def compare_runners(
    spec: ComponentSpec,
    reference: Any,
    candidate: Any,
    feeds: Iterable[Mapping[str, np.ndarray]],
    tolerance: Tolerance | None = None,
) -> ValidationReport:
    """Run both runners on ``feeds`` and compare every output of every feed with the reference's."""
    tol = tolerance or TOLERANCES.get(spec.name, DEFAULT_TOLERANCE)
    feeds = [dict(f) for f in feeds]
    expected, got = run_feeds(reference, feeds), run_feeds(candidate, feeds)
    report = ValidationReport(spec.name, reference.name, candidate.name, tol, passed=True)
    for feed, ref, cand in zip(feeds, expected, got):
        diffs = {}
        for name in spec.output_names:
            diff = compare_output(ref[name], cand[name], tol) if name in cand else OutputDiff(*(float("nan"),) * 3, -1, False, False)
            diffs[name] = diff
            report.passed &= diff.passed
        report.iterations.append({"batch": int(next(iter(feed.values())).shape[0]), "outputs": diffs})
    return report


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
    """The engine at ``plan`` against its FP32 ONNX graph on ONNX Runtime (needs tensorrt and a GPU)."""
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
