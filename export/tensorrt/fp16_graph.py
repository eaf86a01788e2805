"""The FP16 plan written into the ONNX graph: FP16 weights and activations, FP32 islands behind casts.

TensorRT builds this graph *strongly typed*, so the engine runs each tensor in the type the graph
gives it; nothing depends on builder precision flags, which TensorRT 11 no longer has.

The conversion is onnxruntime's float16 converter (``onnxruntime.transformers.float16``, shipped in
the pinned ``onnxruntime`` wheel and maintained with ORT's own Stable Diffusion FP16 tooling): the
nodes the component's rules select (``export.tensorrt.precision``) are its node block list, graph
inputs and outputs keep FP32 (so specs, configs and bindings are unchanged). One correction follows:
the converter casts every blocked node's output to FP16 and back to FP32 for the next blocked node,
so a value passed *inside* an island (a decomposed norm's ``x^2``) would still be rounded to, and
overflow in, FP16. :func:`join_fp32_islands` removes those round trips, so an island stays FP32 from
its first cast in to its last cast out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bll_python.precision import Fp32Rule
from export.tensorrt.precision import DIMENSION_OPS, Fp32Selection, fp32_rules, select_fp32_nodes

PLAN_SUFFIX = ".plan.json"
# Past protobuf's 2 GB limit the graph keeps its weights in a side file (an SD1.5 UNet is 1.7 GB in FP16).
EXTERNAL_DATA_BYTES = 2**31 - 2**26
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto


@dataclass
class Fp16Plan:
    """What the FP16 graph keeps in FP32: the selected nodes and the FP32 tensors of their islands."""

    component: str
    onnx: Path
    selection: Fp32Selection
    island_tensors: list[str] = field(default_factory=list)
    joined_round_trips: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "onnx": str(self.onnx),
            "joined_round_trips": self.joined_round_trips,
            "island_tensors": self.island_tensors,
            **self.selection.to_json(),
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "Fp16Plan":
        selection = Fp32Selection(nodes=body["nodes"], matched=body["matched"], native=body["native"])
        return cls(body["component"], Path(body["onnx"]), selection, body["island_tensors"], body["joined_round_trips"])

    def save(self) -> Path:
        path = plan_file(self.onnx)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path


def plan_file(fp16_onnx: Path) -> Path:
    return Path(fp16_onnx).with_suffix(PLAN_SUFFIX)


def _cast_to(node: Any) -> int | None:
    if node is None or node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def join_fp32_islands(graph: Any, fp32_tensors: set[str]) -> int:
    """Remove FP32 -> FP16 -> FP32 round trips: a ``Cast(to=FP32)`` of a ``Cast(to=FP16)`` of an FP32
    tensor reads that FP32 tensor directly. Returns how many round trips were removed."""
    producers = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    renames: dict[str, str] = {}
    dropped, count = [], 0
    for node in graph.node:
        down = producers.get(node.input[0]) if _cast_to(node) == _FLOAT else None
        if _cast_to(down) != _FLOAT16 or down.input[0] not in fp32_tensors:
            continue
        count += 1
        if node.output[0] in graph_outputs:
            node.input[0] = down.input[0]  # a graph output keeps its name: the cast becomes FP32 -> FP32
        else:
            renames[node.output[0]] = down.input[0]
            dropped.append(node)

    def resolve(name: str) -> str:
        while name in renames:
            name = renames[name]
        return name

    for node in dropped:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = resolve(name)
    # A Cast(to=FP16) whose every reader went away goes too.
    read = {name for node in graph.node for name in node.input} | graph_outputs
    for node in [n for n in graph.node if _cast_to(n) == _FLOAT16 and n.output[0] not in read]:
        graph.node.remove(node)
    return count


def _typed(graph: Any, opsets: list[Any]) -> Any:
    """Shape inference on the graph's structure: dims and types, no weights (graphs > 2 GB)."""
    import onnx

    copy = onnx.GraphProto()
    copy.CopyFrom(graph)
    inputs = {i.name for i in copy.input}
    for t in copy.initializer:  # declared as typed inputs, so inference still sees them
        if t.name not in inputs:
            copy.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    del copy.initializer[:]
    return onnx.shape_inference.infer_shapes(onnx.helper.make_model(copy, opset_imports=opsets)).graph


def _fp32_names(typed: Any) -> set[str]:
    return {v.name for v in list(typed.value_info) + list(typed.input) + list(typed.output) if v.type.tensor_type.elem_type == _FLOAT}


def convert_model(model: Any, component: str, onnx_path: Path = Path("model.fp16.onnx"), rules: tuple[Fp32Rule, ...] | None = None) -> tuple[Any, Fp16Plan]:
    """The FP16 ``ModelProto`` of an FP32 ``model`` (weights loaded) and its plan; ``rules`` default
    to the component record's. Runs on the CPU."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    opsets = list(model.opset_import)
    model.graph.value_info.extend(_typed(model.graph, opsets).value_info)
    selection = select_fp32_nodes(model.graph, fp32_rules(component) if rules is None else rules)
    if all_nodes_fp32(model.graph, selection):
        # Nothing to convert (FORCE_UPCAST): the FP32 graph itself, every float tensor an island
        # tensor, so the engine check reads back that TensorRT kept all of them FP32.
        islands = sorted(_fp32_names(_typed(model.graph, opsets)))
        return model, Fp16Plan(component, Path(onnx_path), selection, islands, 0)
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,  # the engine's bindings keep the spec's FP32 tensors
        disable_shape_infer=True,  # done above on the weightless structure
        op_block_list=[],  # only the rules: ORT's default list is for classic-ML ops
        node_block_list=list(selection.nodes),
    )
    fp32 = _fp32_names(_typed(converted.graph, opsets))
    joined = join_fp32_islands(converted.graph, fp32)
    fp32 = _fp32_names(_typed(converted.graph, opsets))
    islands = sorted({t for n in converted.graph.node if n.name in selection.nodes for t in list(n.input) + list(n.output)} & fp32)
    return converted, Fp16Plan(component, Path(onnx_path), selection, islands, joined)


def all_nodes_fp32(graph: Any, selection: Fp32Selection) -> bool:
    """Whether the selection keeps every node that computes on values (all but Shape/Size) in FP32."""
    return all(n.name in selection.nodes for n in graph.node if n.op_type not in DIMENSION_OPS)


def _weight_bytes(model: Any) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def write_fp16_graph(source: Path, target: Path, component: str, rules: tuple[Fp32Rule, ...] | None = None) -> Fp16Plan:
    """Read the FP32 graph at ``source``, write its FP16 graph to ``target`` and the plan next to it."""
    import onnx

    model = onnx.load(str(source))  # external weights load from the source's folder
    target = Path(target)
    converted, plan = convert_model(model, component, target, rules)
    target.parent.mkdir(parents=True, exist_ok=True)
    external = _weight_bytes(converted) > EXTERNAL_DATA_BYTES
    onnx.save_model(converted, str(target), save_as_external_data=external, all_tensors_to_one_file=True, location=target.name + ".data")
    plan.save()
    return plan
