"""The ``Engines`` interface and its in-process implementations (torch modules, ONNX Runtime).

An engine maps ``{input name: tensor}`` to ``{output name: tensor}`` with the names, dtypes and
order of its :class:`~bll_python.specs.ComponentSpec`. The pipeline never knows which runtime is
behind it: the Triton BLS engines (``bll_python.triton_engines``) and TensorRT engines follow the
same protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol

import numpy as np
import torch

from bll_python.components import COMPONENT_NAMES, CORE_COMPONENTS
from bll_python.dtypes import torch_dtype
from bll_python.ort_options import ort_session_options
from bll_python.specs import ComponentSpec

Tensors = Mapping[str, torch.Tensor]


class Engine(Protocol):
    spec: ComponentSpec

    def __call__(self, inputs: Tensors) -> dict[str, torch.Tensor]: ...


class ComponentError(RuntimeError):
    """A component model failed or is unavailable; ``component`` names it."""

    def __init__(self, component: str, message: str, *, unavailable: bool = False) -> None:
        super().__init__(f"{component}: {message}")
        self.component = component
        self.unavailable = unavailable


def run_in_chunks(spec: ComponentSpec, inputs: Tensors, run: Callable[[Tensors], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Split a call larger than the spec's max batch into several; rows are independent."""
    batch = next(iter(inputs.values())).shape[0]
    if batch <= spec.max_batch:
        return run(inputs)
    parts = [run({k: v[i : i + spec.max_batch] for k, v in inputs.items()}) for i in range(0, batch, spec.max_batch)]
    return {name: torch.cat([p[name] for p in parts]) for name in spec.output_names}


def cast_inputs(spec: ComponentSpec, inputs: Tensors) -> dict[str, torch.Tensor]:
    missing = [n for n in spec.input_names if n not in inputs]
    if missing:
        raise KeyError(f"{spec.name}: missing inputs {missing}")
    return {t.name: inputs[t.name].to(torch_dtype(t.dtype)).contiguous() for t in spec.inputs}


class TorchEngine:
    """A torch module whose ``forward`` takes the spec's inputs in order: the parity reference."""

    def __init__(self, module: torch.nn.Module, spec: ComponentSpec, device: str | torch.device = "cpu") -> None:
        self.module = module.eval().to(device)
        self.spec = spec
        self.device = torch.device(device)

    @torch.inference_mode()
    def _run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        args = [v.to(self.device) for v in cast_inputs(self.spec, inputs).values()]
        out = self.module(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return dict(zip(self.spec.output_names, outs))

    def __call__(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        return run_in_chunks(self.spec, inputs, self._run)


class OrtEngine:
    """An ONNX Runtime session over the exported graph (the CPU serving runtime)."""

    def __init__(
        self,
        onnx_path: Path,
        spec: ComponentSpec,
        providers: list[str] | None = None,
        threads: int = 0,
        allow_spinning: bool = False,
    ) -> None:
        import onnxruntime as ort

        options = ort_session_options(threads, allow_spinning)
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers or ["CPUExecutionProvider"])
        self.spec = spec
        names = [i.name for i in self.session.get_inputs()]
        if names != spec.input_names:
            raise ValueError(f"{spec.name}: graph {onnx_path} takes {names}, the spec says {spec.input_names}")

    def _run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        feeds = {k: v.cpu().numpy() for k, v in cast_inputs(self.spec, inputs).items()}
        outs = self.session.run(self.spec.output_names, feeds)
        return {n: torch.from_numpy(np.ascontiguousarray(o)) for n, o in zip(self.spec.output_names, outs)}

    def __call__(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        return run_in_chunks(self.spec, inputs, self._run)


class CountingEngine:
    """Wraps an engine and records the batch size of every call (tests and benchmarks)."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.calls: list[int] = []

    @property
    def rows(self) -> int:
        return sum(self.calls)

    def __call__(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        self.calls.append(int(next(iter(inputs.values())).shape[0]))
        return self.inner(inputs)


class Engines:
    """One engine per component record, in record order: ``engines.unet_teacher`` or ``engines["unet_teacher"]``.

    Takes the core components positionally in their order, by name, or both; the components of some
    families only (SDXL's ``text_encoder_2``) by name. A missing core or unknown name is an error.
    """

    def __init__(self, *engines: Engine, **named: Engine) -> None:
        if len(engines) > len(CORE_COMPONENTS):
            raise TypeError(f"{len(engines)} engines for {len(CORE_COMPONENTS)} components {list(CORE_COMPONENTS)}")
        given = dict(zip(CORE_COMPONENTS, engines))
        twice = sorted(set(given) & set(named))
        unknown = sorted(set(named) - set(COMPONENT_NAMES))
        given.update(named)
        missing = [n for n in CORE_COMPONENTS if n not in given]
        if twice or unknown or missing:
            raise TypeError(f"engines: given twice {twice}, unknown {unknown}, missing {missing}; the components are {list(COMPONENT_NAMES)}")
        self._engines = {n: given[n] for n in COMPONENT_NAMES if n in given}

    def __getattr__(self, name: str) -> Engine:
        try:
            return self.__dict__["_engines"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Engine:
        return self._engines[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._engines)

    def items(self) -> list[tuple[str, Engine]]:
        return list(self._engines.items())


def repository_ort_engines(repository: Path, specs: Mapping[str, ComponentSpec]) -> Engines:
    """ONNX Runtime engines over a generated repository's graphs, with the session settings each
    served component reads from its ``config.pbtxt``, so in-process and served compute the same way."""
    from bll_python.layout import component_parameters, onnx_path

    engines = {}
    for name, spec in specs.items():
        params = component_parameters(repository, name)
        threads, spinning = int(params.get("intra_op_threads", "0") or 0), params.get("allow_spinning", "0") == "1"
        engines[name] = OrtEngine(onnx_path(repository, name), spec, threads=threads, allow_spinning=spinning)
    return Engines(**engines)
