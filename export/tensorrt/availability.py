"""Whether TensorRT engines can be built or run here, and what is missing when not."""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util

from polygraphy.exception import PolygraphyException

from export.tensorrt.releases import SERVING, TENSORRT_PIN, same_release

GPU_INSTALL_HINT = "pip install -e .[gpu] --extra-index-url https://pypi.nvidia.com"
# Distributions that each install the ``onnxruntime`` package: two of them overwrite each other's files.
ONNXRUNTIME_FLAVOURS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-training")


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


def tensorrt_version_problem(version: str) -> str | None:
    """None when engines built by TensorRT ``version`` load where this project serves them."""
    if same_release(version):
        return None
    return (
        f"tensorrt {version} is installed, but engines load only in the TensorRT that built them and the "
        f"{SERVING.container} Triton container runs TensorRT {TENSORRT_PIN}: pip install tensorrt-cu12=={TENSORRT_PIN} "
        f"(or {GPU_INSTALL_HINT})"
    )


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
    import tensorrt

    problem = tensorrt_version_problem(tensorrt.__version__)
    if problem:
        raise TensorRTUnavailable(problem)


def installed_onnxruntime_flavours() -> list[str]:
    """The installed distributions that write the ``onnxruntime`` package (more than one: a broken install)."""
    found = []
    for name in ONNXRUNTIME_FLAVOURS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found
