"""Write a Triton model repository for runtime ``tensorrt``: FP16 plans behind GPU configs.

Two ways to run a plan, chosen by ``backend``:

- ``"tensorrt"``: ``platform: "tensorrt_plan"``, Triton's TensorRT backend (NVIDIA's container).
- ``"python-trt"``: a Python-backend model that runs the plan with the tensorrt Python API
  (template ``model_repository/tensorrt_component``), for the pip-installed server, which ships
  no TensorRT backend.

Both use the same layout (``<repo>/<component>/1/model.plan``), the same tensor blocks as the ONNX
Runtime repository (from ``export.triton_repository``), ``KIND_GPU`` instances and dynamic batching.
The BLS runs its pipeline on the GPU and keeps component outputs there (DLPack in, GPU memory out).

BLS-to-component tensors on the GPU travel through Triton's CUDA memory pool, which is a server flag
(``--cuda-memory-pool-byte-size``), not a model-config field: the writer sizes it from the specs and
records the flags in ``assets/tritonserver_args.json`` for the launcher (``read_server_args``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from bll_python.deployment import Deployment
from bll_python.layout import BLS_MODEL, assets_dir, model_dir, plan_path, version_dir
from bll_python.specs import ComponentSpec
from export.triton_repository import (
    write_bls,
    COMPONENT_QUEUE_DELAY_US,
    ORT_TEMPLATE,
    TEMPLATES,
    _dims,
    _dynamic_batching,
    _instance_group,
    _parameters,
    _tensor_block,
    bls_config,
)
from export.trt_build import BuildOptions, BuildResult, TensorRTUnavailable, build_engines, repository_builds, require_tensorrt

BACKENDS = ("tensorrt", "python-trt")
TRT_TEMPLATE = TEMPLATES / "tensorrt_component" / "model.py"
SERVER_ARGS_FILE = "tritonserver_args.json"

MIB = 2**20
# Triton's default pool is 64 MiB; one SD1.5 decode + score at 8 rows already moves ~50 MiB.
MIN_CUDA_POOL_BYTES = 256 * MIB
POOL_HEADROOM_BYTES = 64 * MIB


# ---------------------------------------------------------------------------------------------
# Placement: instances per GPU


def teacher_share(accept_rate: float, student_steps: int, teacher_steps: int, cost_ratio: float = 1.0) -> float:
    """Fraction of UNet GPU time spent in the teacher.

    Per image the student runs ``student_steps`` and, for the ``1 - accept_rate`` rejected rows, the
    teacher runs ``teacher_steps``; ``cost_ratio`` is a teacher step's cost over a student step's
    (2.0 when the student skips CFG through a guidance embedding and the teacher does not).
    """
    if not 0.0 <= accept_rate <= 1.0:
        raise ValueError(f"accept_rate must be in [0, 1], got {accept_rate}")
    teacher = (1.0 - accept_rate) * teacher_steps * cost_ratio
    return teacher / (student_steps + teacher)


@dataclass(frozen=True)
class Placement:
    """Model instances per GPU. One Triton per GPU: scale out by adding GPUs, not by splitting one."""

    text_encoder: int = 1
    unet_student: int = 1
    unet_teacher: int = 1
    vae_decoder: int = 1
    image_reward: int = 1
    bls: int = 1

    @classmethod
    def from_accept_rate(
        cls, accept_rate: float, *, student_steps: int, teacher_steps: int, unet_instances: int = 2, cost_ratio: float = 1.0, **others: int
    ) -> "Placement":
        """Split ``unet_instances`` between student and teacher in proportion to their UNet time."""
        if unet_instances < 2:
            raise ValueError("need at least 2 UNet instances per GPU: one student, one teacher")
        share = teacher_share(accept_rate, student_steps, teacher_steps, cost_ratio)
        teacher = min(max(round(unet_instances * share), 1), unet_instances - 1)
        return cls(unet_student=unet_instances - teacher, unet_teacher=teacher, **others)

    def count(self, model: str) -> int:
        return getattr(self, "bls" if model == BLS_MODEL else model)


# ---------------------------------------------------------------------------------------------
# Configs


def tensorrt_component_config(spec: ComponentSpec, *, backend: str = "tensorrt", instances: int = 1, gpus: Sequence[int] | None = None) -> str:
    """``config.pbtxt`` of a component whose ``1/model.plan`` is a TensorRT engine built from ``spec``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    runtime = 'platform: "tensorrt_plan"\n' if backend == "tensorrt" else 'backend: "python"\n'
    params = {} if backend == "tensorrt" else {"plan_file": "model.plan", "FORCE_CPU_ONLY_INPUT_TENSORS": "no"}
    return (
        f"name: \"{spec.name}\"\n{runtime}max_batch_size: {spec.max_batch}\n"
        + _tensor_block("input", [(t.name, t.triton_dtype, _dims(t), False) for t in spec.inputs], reshape_scalars=True)
        + _tensor_block("output", [(t.name, t.triton_dtype, _dims(t), False) for t in spec.outputs], reshape_scalars=True)
        + _dynamic_batching(COMPONENT_QUEUE_DELAY_US, timeout_override=True)
        + _instance_group(instances, "KIND_GPU", gpus)
        + _parameters(params)
    )


def gpu_bls_config(deployment: Deployment, *, instances: int = 1, gpus: Sequence[int] | None = None) -> str:
    """The BLS config with its pipeline on the GPU: tensors stay in GPU memory between components."""
    text = bls_config(deployment, instances=instances, kind="KIND_GPU")
    if gpus:
        text = text.replace(_instance_group(instances, "KIND_GPU"), _instance_group(instances, "KIND_GPU", gpus))
    # "device" is read by the BLS model.py (GPU tensors + preferred GPU output memory); FORCE_CPU_ONLY_INPUT_TENSORS by the backend.
    return text + _parameters({"FORCE_CPU_ONLY_INPUT_TENSORS": "no", "device": "cuda"})


# ---------------------------------------------------------------------------------------------
# Server flags


def _io_bytes(spec: ComponentSpec) -> int:
    sizes = spec.sizes("max")
    return sum(int(np.prod(t.shape(sizes))) * np.dtype(t.numpy_dtype).itemsize for t in spec.inputs + spec.outputs)


def cuda_pool_bytes(specs: Mapping[str, ComponentSpec], bls_instances: int = 1) -> int:
    """CUDA pool for BLS traffic: the largest component call at max batch, twice per BLS instance
    (a step's outputs are alive while the next call's inputs are placed), plus headroom."""
    need = max(_io_bytes(s) for s in specs.values()) * 2 * bls_instances + POOL_HEADROOM_BYTES
    rounded = -(-need // (64 * MIB)) * 64 * MIB
    return max(rounded, MIN_CUDA_POOL_BYTES)


def server_args(pool_bytes: int, gpus: Sequence[int] | None = None) -> list[str]:
    return [f"--cuda-memory-pool-byte-size={g}:{pool_bytes}" for g in (gpus or [0])]


def read_server_args(repository: Path) -> list[str]:
    """The tritonserver flags a tensorrt repository was written for ([] for other runtimes)."""
    path = assets_dir(repository) / SERVER_ARGS_FILE
    return list(json.loads(path.read_text())["server_args"]) if path.is_file() else []


# ---------------------------------------------------------------------------------------------
# Writers


@dataclass
class TensorRTRepository:
    repository: Path
    backend: str
    placement: Placement
    gpus: list[int] | None
    cuda_pool_bytes: int
    server_args: list[str]

    def to_json(self) -> dict:
        d = asdict(self)
        d["repository"] = str(self.repository)
        return d


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
        raise FileNotFoundError(f"no TensorRT plan at {', '.join(missing)}: build the engines first (export.trt_build)")
    gpu_list = list(gpus) if gpus else None
    for name, spec in specs.items():
        (model_dir(repository, name) / "config.pbtxt").write_text(
            tensorrt_component_config(spec, backend=backend, instances=placement.count(name), gpus=gpu_list)
        )
        _place_component_model(version_dir(repository, name), backend)
    write_bls(repository, gpu_bls_config(deployment, instances=placement.bls, gpus=gpu_list))

    pool = pool_bytes or cuda_pool_bytes(specs, placement.bls)
    written = TensorRTRepository(repository, backend, placement, gpu_list, pool, server_args(pool, gpu_list))
    assets_dir(repository).mkdir(parents=True, exist_ok=True)
    (assets_dir(repository) / SERVER_ARGS_FILE).write_text(json.dumps(written.to_json(), indent=2))
    return written


def _place_component_model(version: Path, backend: str) -> None:
    target = version / "model.py"
    if backend == "python-trt":
        shutil.copyfile(TRT_TEMPLATE, target)
    elif target.is_file() and target.read_bytes() in (ORT_TEMPLATE.read_bytes(), TRT_TEMPLATE.read_bytes()):
        # A stale Python model next to a plan would only confuse whoever reads the folder.
        target.unlink()


def build_tensorrt_repository(
    source: Path,
    target: Path,
    *,
    backend: str = "tensorrt",
    placement: Placement | None = None,
    gpus: Sequence[int] | None = None,
    timing_cache: Path | None = None,
    options: BuildOptions | None = None,
) -> tuple[TensorRTRepository, list[BuildResult]]:
    """ONNX Runtime repository in, TensorRT repository out: BLS and assets copied, engines built, configs written.

    Needs tensorrt and a GPU.
    """
    require_tensorrt()
    source, target = Path(source), Path(target)
    deployment = Deployment.load(assets_dir(source))
    shutil.copytree(model_dir(source, BLS_MODEL), model_dir(target, BLS_MODEL), dirs_exist_ok=True)
    builds = repository_builds(source, deployment.specs(), target, timing_cache=timing_cache, options=options or BuildOptions())
    results = build_engines(builds)
    return write_tensorrt_repository(target, deployment, backend=backend, placement=placement, gpus=gpus), results


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.trt_repository", description="Build FP16 TensorRT engines from an ONNX Runtime repository and write a GPU repository.")
    parser.add_argument("--source", type=Path, required=True, help="ONNX Runtime repository written by export.build")
    parser.add_argument("--target", type=Path, required=True, help="TensorRT repository to write")
    parser.add_argument("--backend", choices=BACKENDS, default="tensorrt", help="tensorrt: NVIDIA container; python-trt: pip server")
    parser.add_argument("--gpus", type=int, nargs="*", help="device ids for instance_group (default: every visible GPU)")
    parser.add_argument("--accept-rate", type=float, help="expected student accept rate; sizes student/teacher instances")
    parser.add_argument("--unet-instances", type=int, default=2, help="UNet instances per GPU, split by --accept-rate")
    parser.add_argument("--cost-ratio", type=float, default=1.0, help="teacher UNet step cost / student UNet step cost")
    parser.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimization level (0-5)")
    parser.add_argument("--timing-cache", type=Path, help="persistent timing cache (default: next to --target)")
    args = parser.parse_args(argv)
    placement = None
    if args.accept_rate is not None:
        defaults = Deployment.load(assets_dir(args.source)).defaults
        placement = Placement.from_accept_rate(
            args.accept_rate, student_steps=defaults.student_steps, teacher_steps=defaults.teacher_steps, unet_instances=args.unet_instances, cost_ratio=args.cost_ratio
        )
    try:
        written, results = build_tensorrt_repository(
            args.source, args.target, backend=args.backend, placement=placement, gpus=args.gpus,
            timing_cache=args.timing_cache, options=BuildOptions(builder_optimization_level=args.opt_level),
        )
    except TensorRTUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(f"  {r.component:<13} {r.plan_bytes / MIB:9.1f} MiB  {r.seconds:7.1f} s  {len(r.fp32_layers)} layers pinned to FP32")
    print(f"repository: {written.repository} ({written.backend})\nserve with: python -m export.serve --repository {written.repository} -- {' '.join(written.server_args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
