"""Whether TensorRT engines can be built or run here, and what is missing when not."""

from __future__ import annotations

import ctypes
import importlib.util

from polygraphy.exception import PolygraphyException

GPU_INSTALL_HINT = "pip install -e .[gpu] --extra-index-url https://pypi.nvidia.com"


class TensorRTUnavailable(PolygraphyException):
    """Building or running an engine needs ``tensorrt`` and an NVIDIA GPU, and one is missing."""


def cuda_device_count() -> int:
    """GPUs the CUDA driver sees; 0 without a driver (asks libcuda directly, so a CPU torch is fine)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def tensorrt_unavailable_reason() -> str | None:
    """None when engines can be built here, else what is missing and how to get it."""
    if importlib.util.find_spec("tensorrt") is None:
        return f"needs tensorrt ({GPU_INSTALL_HINT}) and an NVIDIA GPU"
    if cuda_device_count() == 0:
        return "needs an NVIDIA GPU with a working driver (libcuda.so.1 reports no device)"
    return None


def require_tensorrt() -> None:
    reason = tensorrt_unavailable_reason()
    if reason:
        raise TensorRTUnavailable(f"TensorRT engine build {reason}")
