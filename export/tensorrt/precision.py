"""The FP32 guards of an FP16 engine: a ``PostprocessNetwork`` step that pins the layers a component's
record names (``bll_python.components``; the rules and why each exists: ``bll_python.precision``).

Only floating-point, non-shape layers are pinned: shape arithmetic, casts and integer layers keep
their types, since forcing them under ``precision_constraints="obey"`` fails the build.
"""

from __future__ import annotations

from typing import Any

from polygraphy.logger import G_LOGGER

from bll_python.components import COMPONENTS
from bll_python.precision import DEFAULT_FP32_RULES, Fp32Rule

# Each component's rules, from its record.
FP32_RULES: dict[str, tuple[Fp32Rule, ...]] = {name: c.fp32_rules for name, c in COMPONENTS.items()}


def fp32_rules(component: str) -> tuple[Fp32Rule, ...]:
    """The rules of ``component``; a graph no record describes gets the normalization guard."""
    return FP32_RULES.get(component, DEFAULT_FP32_RULES)


# Never pinned: they carry no float math. Layers whose data input (input 0) or outputs are not
# floating point, or are shape tensors, are skipped too: integer math must keep its types.
_UNPINNABLE = {"CONSTANT", "SHAPE", "IDENTITY", "CAST", "ASSERTION", "CONDITION", "CONDITIONAL_INPUT", "CONDITIONAL_OUTPUT"}


class KeepFp32:
    """``PostprocessNetwork`` step: set ``layer.precision = float32`` on layers matching ``rules``.

    After the build, ``marked`` lists the names of the layers it pinned.
    """

    def __init__(self, rules: tuple[Fp32Rule, ...]) -> None:
        self.rules = tuple(rules)
        self.marked: list[str] = []

    def __call__(self, network: Any) -> None:
        from polygraphy.mod.trt_importer import lazy_import_trt

        self.apply(network, lazy_import_trt())

    def apply(self, network: Any, trt: Any) -> list[str]:
        """Pin the matching layers of ``network``; ``trt`` is the tensorrt module (a stand-in in tests)."""
        floats = {trt.float32, trt.float16}
        self.marked = []
        hit: set[Fp32Rule] = set()
        for index in range(network.num_layers):
            layer = network.get_layer(index)
            if layer.type.name in _UNPINNABLE:
                continue
            outs = [layer.get_output(i) for i in range(layer.num_outputs)]
            data = layer.get_input(0) if layer.num_inputs else None
            if data is None or data.dtype not in floats or not outs or any(t.dtype not in floats or t.is_shape_tensor for t in outs):
                continue
            rule = next((r for r in self.rules if r.matches(layer.type.name, layer.name)), None)
            if rule is None:
                continue
            layer.precision = trt.float32
            if rule.outputs:
                for i in range(layer.num_outputs):
                    layer.set_output_type(i, trt.float32)
            self.marked.append(layer.name)
            hit.add(rule)
        for rule in self.rules:
            if rule not in hit:  # renamed modules or a new exporter would silently drop a guard
                G_LOGGER.warning(f"FP32 rule matched no layer: {rule.why}")
        return self.marked
