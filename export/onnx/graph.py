"""ONNX export driven by a component spec, and its parity check against torch with ONNX Runtime."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bll_python.specs import ComponentSpec

OPSET = 17
# Graphs past protobuf's 2 GB limit (the real UNets, ImageReward ViT-L) keep weights outside.
EXTERNAL_DATA_BYTES = 2**31 - 2**26


@dataclass
class ParityReport:
    component: str
    batch_sizes: tuple[int, ...]
    max_abs_error: float

    def __str__(self) -> str:
        return f"{self.component}: max |ort - torch| = {self.max_abs_error:.2e} at batch {self.batch_sizes}"


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_onnx(module: torch.nn.Module, spec: ComponentSpec, path: Path, trace_batch: int = 2) -> Path:
    """Trace ``module`` at ``trace_batch`` and write ``path`` with the spec's names and dynamic axes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = spec.sample_inputs(trace_batch)
    args = tuple(torch.from_numpy(sample[n]) for n in spec.input_names)
    external = _param_bytes(module) > EXTERNAL_DATA_BYTES
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python-side shape math are expected
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    if external:
        import onnx

        model = onnx.load(str(path))
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data")
    return path


def check_onnx(module: torch.nn.Module, spec: ComponentSpec, path: Path, batch_sizes: tuple[int, ...] = (1, 3)) -> ParityReport:
    """Max abs difference between ONNX Runtime and torch on random inputs at several batch sizes."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for b in batch_sizes:
        sample = spec.sample_inputs(b, seed=b)
        with torch.no_grad():
            ref = module.eval()(*[torch.from_numpy(sample[n]) for n in spec.input_names])
        refs = ref if isinstance(ref, (tuple, list)) else (ref,)
        outs = session.run(spec.output_names, sample)
        for r, o in zip(refs, outs):
            if tuple(o.shape) != tuple(r.shape):
                raise AssertionError(f"{spec.name}: ORT output shape {o.shape} != torch {tuple(r.shape)} at batch {b}")
            worst = max(worst, float(np.max(np.abs(o - r.numpy()))))
    return ParityReport(spec.name, batch_sizes, worst)
