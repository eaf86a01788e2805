"""An exported graph against the torch module it came from: ONNX Runtime vs torch on the spec's sample inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bll_python.specs import ComponentSpec


@dataclass
class ParityReport:
    component: str
    batch_sizes: tuple[int, ...]
    max_abs_error: float

    def __str__(self) -> str:
        return f"{self.component}: max |ort - torch| = {self.max_abs_error:.2e} at batch {self.batch_sizes}"


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
