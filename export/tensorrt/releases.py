"""Which TensorRT builds the engines, and which Triton container loads them: one place, as data.

A serialized engine loads only in the TensorRT release that built it, so the ``gpu`` extra pins the
TensorRT of the Triton container this project serves from (``pyproject.toml``, checked by the tests),
and a build with any other TensorRT stops before it starts (``export.tensorrt.availability``).
``export/TENSORRT.md`` explains the table and how each line was established.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    container: str  # nvcr.io/nvidia/tritonserver:<container>-py3
    triton: str
    tensorrt: str  # the TensorRT inside that container (NVIDIA's support matrix; `dpkg -l | grep libnvinfer` there)
    note: str


# What the project serves from: Triton 2.51, the release the pip wheel nvidia-pytriton 0.7.0 ships.
SERVING = Release("24.10", "2.51.0", "10.5.0", "the serving release; engines are built with this TensorRT")
# The first release with Triton's fix for deeply nested JSON in HTTP inference requests (server
# commit f46557b, "Add HTTP JSON parsing recursion depth limit", #8172; first tag v2.58.0).
NESTED_JSON_FIX = Release("25.05", "2.58.0", "10.10.0", "first release that rejects JSON nested deeper than 100 levels")

# The ``gpu`` extra's pin: ``tensorrt-cu12==<this>``.
TENSORRT_PIN = SERVING.tensorrt


def same_release(version: str, pin: str = TENSORRT_PIN) -> bool:
    """Engines are compatible within one major.minor.patch release of TensorRT."""
    return version.split(".")[:3] == pin.split(".")[:3]
