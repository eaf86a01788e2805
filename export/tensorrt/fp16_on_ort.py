"""The FP16 graph against the FP32 graph on ONNX Runtime's CPU provider: the precision plan's numbers
without a GPU (CI runs it on every component of the tiny preset).

What this measures, and what it cannot: ORT's CPU provider has FP16 kernels for only some ops; for
the rest it inserts casts and computes in FP32 (its ``InsertedPrecisionFreeCast`` nodes).
:func:`ort_fp32_ops` names those ops from the session's optimized graph, and the report carries
them, so a reader knows which parts of the FP16 graph ran in FP16 here (FP16 weights, FP16 storage at
every op border ORT keeps, the ops with FP16 kernels) and which only on a GPU.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from bll_python.precision import Tolerance
from bll_python.specs import ComponentSpec
from export.tensorrt.validate import ValidationReport, compare_runners, onnxruntime_runner, validation_feeds

_INSERTED = "InsertedPrecisionFreeCast"


def ort_fp32_ops(fp16_onnx: Path, planned_fp32: Iterable[str] = ()) -> dict[str, int]:
    """Op types (and node counts) the FP16 graph has in FP16 but ORT's CPU provider runs in FP32
    behind its own casts; ``planned_fp32`` (the plan's FP32 nodes) are left out."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        # Basic: constant folding only, so the optimized graph keeps the graph's own op types.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(fp16_onnx), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    producers = {out: n for n in graph.node for out in n.output}
    upcast: dict[str, bool] = {}

    def is_upcast(node) -> bool:
        # Fed an FP32 value by one of ORT's casts, or by another node ORT runs in FP32.
        if node.name not in upcast:
            upcast[node.name] = False
            for name in node.input:
                p = producers.get(name)
                if p is None:
                    continue
                if p.name.startswith(_INSERTED):
                    if any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in p.attribute):
                        upcast[node.name] = True
                elif p.op_type != "Cast" and is_upcast(p):
                    upcast[node.name] = True
                if upcast[node.name]:
                    break
        return upcast[node.name]

    planned = set(planned_fp32)
    counts = collections.Counter(
        n.op_type for n in graph.node if not n.name.startswith(_INSERTED) and n.op_type != "Cast" and n.name not in planned and is_upcast(n)
    )
    return dict(sorted(counts.items()))


def compare_fp16_graph(
    spec: ComponentSpec,
    fp32_onnx: Path,
    fp16_onnx: Path,
    *,
    planned_fp32: Iterable[str] = (),
    tolerance: Tolerance | None = None,
    batches: Sequence[int] | None = None,
) -> ValidationReport:
    """The FP16 graph against the FP32 graph, both on ORT's CPU provider, at the profile corners."""
    report = compare_runners(
        spec, onnxruntime_runner(fp32_onnx, "onnxruntime-fp32"), onnxruntime_runner(fp16_onnx, "onnxruntime-fp16"), validation_feeds(spec, batches), tolerance
    )
    report.notes["ort_fp32_ops"] = ort_fp32_ops(fp16_onnx, planned_fp32)
    return report
