"""ONNX export driven by a component spec: its names, dynamic axes and sample inputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from bll_python.specs import ComponentSpec

OPSET = 17
# Graphs past protobuf's 2 GB limit (the real UNets, ImageReward ViT-L) keep weights outside.
EXTERNAL_DATA_BYTES = 2**31 - 2**26


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
