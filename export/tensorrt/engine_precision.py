"""What TensorRT really did with the FP32 islands: the built engine's layers, read back and checked.

A strongly typed engine must follow the graph's types, but precision requests have been reported
dropped inside fused regions (TensorRT issues #3889, #3941, #4505), so every build reads its engine
back through the engine inspector and fails when a node the rules keep in FP32 does not run in FP32.

The inspector's JSON (``ProfilingVerbosity.DETAILED``, Polygraphy's default) lists layers with
``Name``, ``Inputs``/``Outputs`` (``Name``, ``Format/Datatype``) and ``Metadata``, in which the ONNX
parser names the ONNX nodes a layer came from (``[ONNX Layer: /unet/time_proj/Sin]``, fused layers
list several). A pinned node is checked where it is visible:

- every engine tensor that is an island tensor of the FP16 graph must be FP32;
- a layer made only of pinned nodes must have FP32 float inputs and outputs.

Pinned nodes that no layer names (folded into constants, or inside a fused region that lists only
its ends) are reported as hidden: the engine's numbers (``export.tensorrt.validate``) cover them.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from export.tensorrt.fp16_graph import Fp16Plan

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


class EnginePrecisionError(RuntimeError):
    """A node the FP32 rules keep in FP32 runs in another precision in the built engine."""


def tensor_precision(fmt: str) -> str:
    """``FP32``, ``FP16``, ``BF16`` or ``other`` from an inspector ``Format/Datatype`` string."""
    words = set(re.split(r"[\s/]+", fmt or ""))
    if words & {"FP32", "Float"}:
        return "FP32"
    if words & {"FP16", "Half"}:
        return "FP16"
    if words & {"BF16", "BFloat16"}:
        return "BF16"
    return "other"


@dataclass
class PrecisionCheck:
    component: str
    checked_layers: int = 0
    seen: list[str] = field(default_factory=list)  # pinned nodes some layer names
    hidden: list[str] = field(default_factory=list)  # pinned nodes no layer names
    wrong: list[str] = field(default_factory=list)  # "layer: tensor is FP16" findings

    @property
    def passed(self) -> bool:
        return not self.wrong

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict} {self.component}: {len(self.seen)} FP32 nodes seen in {self.checked_layers} engine layers, {len(self.hidden)} hidden, {len(self.wrong)} not FP32"


def _nodes_of(layer: Mapping[str, Any], pinned: Iterable[str]) -> set[str]:
    named = set(_ONNX_LAYER.findall(layer.get("Metadata") or ""))
    name = layer.get("Name", "")
    # Without metadata, fall back to the layer name ("/a/Mul + /a/Sin", "PWN(/a/Mul, /a/Sin)").
    named |= {n for n in pinned if re.search(re.escape(n) + r"(?![\w.])", name)}
    return named


def check_layer_precisions(info: Mapping[str, Any], plan: Fp16Plan) -> PrecisionCheck:
    """Check the engine inspector's JSON (``info``) against the FP16 graph's plan."""
    layers = info.get("Layers", [])
    if layers and not isinstance(layers[0], dict):
        raise EnginePrecisionError("the engine holds only layer names: build it with ProfilingVerbosity.DETAILED to read precisions")
    pinned = set(plan.selection.nodes)
    islands = set(plan.island_tensors)
    check = PrecisionCheck(plan.component)
    seen: set[str] = set()
    for layer in layers:
        nodes = _nodes_of(layer, pinned)
        mine = nodes & pinned
        tensors = [(t, "input") for t in layer.get("Inputs", [])] + [(t, "output") for t in layer.get("Outputs", [])]
        only_pinned = bool(nodes) and nodes <= pinned
        if not mine and not any(t.get("Name") in islands for t, _ in tensors):
            continue
        check.checked_layers += 1
        seen |= mine
        for tensor, role in tensors:
            precision = tensor_precision(tensor.get("Format/Datatype", ""))
            if precision == "other":
                continue
            if (tensor.get("Name") in islands or only_pinned) and precision != "FP32":
                check.wrong.append(f"{layer.get('Name')}: {role} {tensor.get('Name')} is {precision}")
    check.seen = sorted(seen)
    check.hidden = sorted(pinned - seen)
    return check


def engine_layer_info(engine: Any) -> dict[str, Any]:
    """The engine inspector's JSON for a deserialized ``tensorrt.ICudaEngine`` (GPU machines)."""
    from polygraphy.mod.trt_importer import lazy_import_trt

    trt = lazy_import_trt()
    inspector = engine.create_engine_inspector()
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
