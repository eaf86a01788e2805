"""One dtype table for the whole project: each element type and how every library spells it.

Specs, the serving contract, the engines, the Triton configs, the client and the TensorRT
component model all look their spellings up here, so a new type is one row.

Names are numpy's spelling, plus ``bytes`` for Triton's variable-length strings. torch and
tensorrt are named by attribute (``getattr(torch, row.torch)``) so this module imports neither:
the component stubs that read it stay free of torch, and tensorrt exists only on GPU machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str
    numpy: Any  # numpy scalar type; None where numpy has none (bfloat16)
    triton: str  # model_config DataType name (config.pbtxt)
    client: str  # tritonclient / KServe v2 datatype string
    torch: str | None  # attribute of the torch module; None: no torch tensor holds it
    tensorrt: str | None  # attribute of the tensorrt module (engine bindings)


DTYPES: dict[str, DType] = {
    row.name: row
    for row in (
        DType("float32", np.float32, "TYPE_FP32", "FP32", "float32", "float32"),
        DType("float16", np.float16, "TYPE_FP16", "FP16", "float16", "float16"),
        DType("bfloat16", None, "TYPE_BF16", "BF16", "bfloat16", "bfloat16"),
        DType("int8", np.int8, "TYPE_INT8", "INT8", "int8", "int8"),
        DType("int32", np.int32, "TYPE_INT32", "INT32", "int32", "int32"),
        DType("int64", np.int64, "TYPE_INT64", "INT64", "int64", "int64"),
        DType("uint8", np.uint8, "TYPE_UINT8", "UINT8", "uint8", "uint8"),
        DType("bool", np.bool_, "TYPE_BOOL", "BOOL", "bool", "bool"),
        DType("bytes", np.object_, "TYPE_STRING", "BYTES", None, None),
    )
}


def dtype(name: str) -> DType:
    """The row of ``name``; a KeyError names the known types."""
    try:
        return DTYPES[name]
    except KeyError:
        raise KeyError(f"unknown dtype {name!r}; known: {sorted(DTYPES)}") from None


def torch_dtype(name: str) -> Any:
    """``torch.<dtype>`` for ``name`` (imports torch)."""
    import torch

    row = dtype(name)
    if row.torch is None:
        raise TypeError(f"{name} has no torch tensor type")
    return getattr(torch, row.torch)


def tensorrt_to_torch(trt: Any) -> dict[Any, Any]:
    """``{tensorrt.DataType: torch.dtype}`` for every type both know, for binding engine tensors."""
    import torch

    return {
        getattr(trt, row.tensorrt): getattr(torch, row.torch)
        for row in DTYPES.values()
        if row.tensorrt and row.torch and hasattr(trt, row.tensorrt) and hasattr(torch, row.torch)
    }
