"""The TensorRT repository: FP16 plans behind GPU configs.

Two ways to run a plan, chosen by ``backend``:

- ``"tensorrt"``: ``platform: "tensorrt_plan"``, Triton's TensorRT backend (NVIDIA's container).
- ``"python-trt"``: a Python-backend model that runs the plan with the tensorrt Python API
  (template ``model_repository/tensorrt_component``), for the pip-installed server, which ships
  no TensorRT backend.

Both use the same layout (``<repo>/<component>/1/model.plan``), the same tensors as the ONNX
Runtime repository, ``KIND_GPU`` instances and dynamic batching. The BLS runs its pipeline on the
GPU and keeps component outputs there (DLPack in, GPU memory out).

BLS-to-component tensors on the GPU travel through Triton's CUDA memory pool, which is a server flag
(``--cuda-memory-pool-byte-size``), not a model-config field: the writer sizes it from the specs and
records the flags in ``assets/tritonserver_args.json``, which the launcher passes to tritonserver.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bll_python.components import COMPONENTS
from bll_python.deployment import Deployment
from bll_python.layout import BLS_MODEL, SERVER_ARGS_FILE, assets_dir, plan_path
from bll_python.specs import ComponentSpec
from export.triton.configs import BACKENDS, gpu_bls_config, tensorrt_component_config, write_config
from export.triton.model_files import BLS_TEMPLATE, TRT_TEMPLATE, place_python_model, remove_python_model
from export.triton.placement import Placement

MIB = 2**20
# Triton's default pool is 64 MiB; one SD1.5 decode + score at 8 rows already moves ~50 MiB.
MIN_CUDA_POOL_BYTES = 256 * MIB
POOL_HEADROOM_BYTES = 64 * MIB


def _bytes(spec: ComponentSpec, tensors) -> int:
    sizes = spec.sizes("max")
    return sum(int(np.prod(t.shape(sizes))) * np.dtype(t.numpy_dtype).itemsize for t in tensors)


def bls_instance_pool_bytes(specs: Mapping[str, ComponentSpec]) -> int:
    """Pool bytes one BLS instance can hold at once: the outputs its pipeline keeps for a whole
    request (each record's ``held_outputs``: text embeddings, decoded images), plus the largest
    component call twice (a step's outputs are alive while the next call's inputs are placed)."""
    held = sum(COMPONENTS[name].held_outputs * _bytes(spec, spec.outputs) for name, spec in specs.items() if name in COMPONENTS)
    largest_call = max(_bytes(spec, spec.inputs + spec.outputs) for spec in specs.values())
    return held + 2 * largest_call


def cuda_pool_bytes(specs: Mapping[str, ComponentSpec], bls_instances: int = 1) -> int:
    """CUDA pool for BLS traffic on one GPU: every BLS instance's worst case at once, plus headroom,
    rounded up to 64 MiB and at least :data:`MIN_CUDA_POOL_BYTES`."""
    need = bls_instance_pool_bytes(specs) * bls_instances + POOL_HEADROOM_BYTES
    rounded = -(-need // (64 * MIB)) * 64 * MIB
    return max(rounded, MIN_CUDA_POOL_BYTES)


def server_args(pool_bytes: int, gpus: Sequence[int] | None = None) -> list[str]:
    return [f"--cuda-memory-pool-byte-size={g}:{pool_bytes}" for g in (gpus or [0])]


@dataclass
class TensorRTRepository:
    repository: Path
    backend: str
    placement: Placement
    gpus: list[int] | None
    cuda_pool_bytes: int
    server_args: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": str(self.repository),
            "backend": self.backend,
            "placement": self.placement.to_json(),
            "gpus": self.gpus,
            "cuda_pool_bytes": self.cuda_pool_bytes,
            "server_args": self.server_args,
        }


def write_tensorrt_repository(
    repository: Path,
    deployment: Deployment,
    *,
    backend: str = "tensorrt",
    placement: Placement | None = None,
    gpus: Sequence[int] | None = None,
    pool_bytes: int | None = None,
) -> TensorRTRepository:
    """Configs (and model.py files) around plans already at ``<repo>/<component>/1/model.plan``.

    ``gpus`` None places each model's instances on every visible GPU, which with one Triton per GPU
    (``CUDA_VISIBLE_DEVICES``) is that one GPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    repository = Path(repository)
    placement = placement or Placement()
    specs = deployment.specs()
    missing = [str(plan_path(repository, name)) for name in specs if not plan_path(repository, name).is_file()]
    if missing:
        raise FileNotFoundError(f"no TensorRT plan at {', '.join(missing)}: build the engines first (python -m export.tensorrt)")
    gpu_list = list(gpus) if gpus else None
    for name, spec in specs.items():
        write_config(repository, tensorrt_component_config(spec, backend=backend, instances=placement.count(name), gpus=gpu_list))
        if backend == "python-trt":
            place_python_model(repository, name, TRT_TEMPLATE)
        else:
            remove_python_model(repository, name)
    write_config(repository, gpu_bls_config(deployment, instances=placement.count(BLS_MODEL), gpus=gpu_list))
    place_python_model(repository, BLS_MODEL, BLS_TEMPLATE)

    pool = pool_bytes or cuda_pool_bytes(specs, placement.count(BLS_MODEL))
    written = TensorRTRepository(repository, backend, placement, gpu_list, pool, server_args(pool, gpu_list))
    assets_dir(repository).mkdir(parents=True, exist_ok=True)
    (assets_dir(repository) / SERVER_ARGS_FILE).write_text(json.dumps(written.to_json(), indent=2))
    return written
