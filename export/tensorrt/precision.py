"""Which ONNX nodes of a component's graph stay in FP32: its record's rules applied to the graph.

The selection is plain graph analysis (no tensorrt, no GPU): ``export.tensorrt.fp16_graph`` keeps the
selected nodes in FP32 when it writes the FP16 graph, and ``export.tensorrt.engine_precision`` checks
after the build that TensorRT ran them in FP32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bll_python.components import COMPONENTS
from bll_python.precision import DEFAULT_FP32_RULES, Fp32Rule

if TYPE_CHECKING:
    from bll_python.deployment import Deployment

# Each component's rules, from its record.
FP32_RULES: dict[str, tuple[Fp32Rule, ...]] = {name: c.fp32_rules for name, c in COMPONENTS.items()}

# Never selected: they only read a tensor's dimensions, so its precision does not matter to them.
DIMENSION_OPS = {"Shape", "Size"}
FLOAT_TYPES = {1, 10}  # onnx.TensorProto.FLOAT, FLOAT16


def fp32_rules(component: str, deployment: "Deployment | None" = None) -> tuple[Fp32Rule, ...]:
    """The rules of ``component`` (in ``deployment``, where its checkpoint may ask for FP32 throughout:
    ``Component.fp32_rules_for``); a graph no record describes gets the normalization guard."""
    if component not in COMPONENTS:
        return DEFAULT_FP32_RULES
    return COMPONENTS[component].fp32_rules_for(deployment)


@dataclass
class Fp32Selection:
    """The nodes to keep in FP32 (name -> the rule's ``why``), and what each rule did."""

    nodes: dict[str, str] = field(default_factory=dict)
    # Per rule: how many nodes it selected, and the native ops it left to compute in FP32 themselves.
    matched: dict[str, int] = field(default_factory=dict)
    native: dict[str, list[str]] = field(default_factory=dict)

    @property
    def unmatched(self) -> list[str]:
        """Rules that selected nothing: a renamed module or a new exporter may have dropped a guard."""
        return [why for why, n in self.matched.items() if n == 0 and not self.native.get(why)]

    def to_json(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "matched": self.matched, "native": self.native}


def _scope(node_name: str) -> str:
    return node_name.rsplit("/", 1)[0]


def float_tensors(graph: Any) -> set[str]:
    """Names of the floating-point tensors of an ONNX graph that went through shape inference."""
    infos = list(graph.value_info) + list(graph.input) + list(graph.output)
    names = {v.name for v in infos if v.type.tensor_type.elem_type in FLOAT_TYPES}
    return names | {t.name for t in graph.initializer if t.data_type in FLOAT_TYPES}


def select_fp32_nodes(graph: Any, rules: tuple[Fp32Rule, ...]) -> Fp32Selection:
    """Apply ``rules`` to an ONNX ``GraphProto`` (after shape inference, so tensor types are known)."""
    selection = Fp32Selection()
    producers = {out: node for node in graph.node for out in node.output}
    floats = float_tensors(graph)
    for rule in rules:
        native_scopes = {_scope(n.name) for n in graph.node if n.op_type in rule.native_ops}
        selection.native[rule.why] = [n.name for n in graph.node if n.op_type in rule.native_ops and rule.matches(n.op_type, n.name)]
        chosen = [
            n for n in graph.node
            if n.op_type not in DIMENSION_OPS and rule.matches(n.op_type, n.name) and _scope(n.name) not in native_scopes
        ]  # fmt: skip
        if rule.feeders:
            chosen += _feeders(chosen, producers, floats)
        count = 0
        for node in chosen:
            if node.name not in selection.nodes:
                selection.nodes[node.name] = rule.why
                count += 1
        selection.matched[rule.why] = count
    return selection


def _feeders(nodes: list[Any], producers: dict[str, Any], floats: set[str]) -> list[Any]:
    """Every node upstream of ``nodes`` along floating-point tensors, back to the graph inputs."""
    seen = {n.name for n in nodes}
    stack, found = list(nodes), []
    while stack:
        for tensor in stack.pop().input:
            producer = producers.get(tensor)
            if tensor in floats and producer is not None and producer.name not in seen and producer.op_type not in DIMENSION_OPS:
                seen.add(producer.name)
                found.append(producer)
                stack.append(producer)
    return found
