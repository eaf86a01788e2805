"""Write a Triton model repository: ``config.pbtxt`` per component from its spec, plus the BLS model.

Runtimes:
- ``onnxruntime`` (default, runs anywhere): each component is a Python-backend model that runs its
  ``model.onnx`` with ONNX Runtime (template: ``model_repository/onnxruntime_component``).
- ``tensorrt``: see ``export.trt_repository`` (``platform: "tensorrt_plan"``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bll_python.contract import REQUEST_FIELDS, RESPONSE_FIELDS
from bll_python.deployment import Deployment
from bll_python.layout import BLS_MODEL, model_dir, version_dir
from bll_python.specs import BATCH, ComponentSpec, TensorSpec

TEMPLATES = Path(__file__).resolve().parent.parent / "model_repository"
ORT_TEMPLATE = TEMPLATES / "onnxruntime_component" / "model.py"
BLS_TEMPLATE = TEMPLATES / BLS_MODEL / "1" / "model.py"

# The BLS has no dynamic batcher: every request gets an execution of its own on one of several BLS
# instances, so an image the student answers leaves after ImageReward instead of waiting for the
# teacher work of batch neighbours (head-of-line blocking), and rows of different requests still
# share component calls, merged by the components' dynamic batchers (every UNet graph takes a
# per-row timestep, so rows at different steps share a call). Measured on 2 cores (benchmarks/README):
# one batching BLS 0.84 / 0.42 / 0.39 images/s on `small` (student / teacher / refine_k50, c=8),
# 8 BLS instances 1.50 / 0.87 / 0.72, against a machine limit of 1.76 / 0.91 / 0.72.
# GPU components (export.trt_repository): merges the BLS calls of concurrent BLS instances.
COMPONENT_QUEUE_DELAY_US = 500
# CPU components answer a call as soon as an instance is free; calls already queued are merged. A
# delay would only hold a lone call, and on a CPU a bigger batch is no cheaper per row (`small`
# UNet: one process at batch 8 made 0.26 teacher images/s, two at batch 1 made 0.91).
CPU_COMPONENT_QUEUE_DELAY_US = 0
# One ONNX Runtime thread per CPU component instance, spinning off, and as many instances of each
# component as cores (CpuPlacement): a pool's threads spin-wait after every run and take the core
# another instance needs, while one thread per instance keeps every core busy with as many calls in
# flight. (Tiny preset, student_only, one instance: 2 spinning threads 440 ms an image, 2 threads
# without spinning 181 ms, 1 thread 140 ms.)
CPU_COMPONENT_THREADS = 1
CPU_COMPONENT_ALLOW_SPINNING = False


@dataclass(frozen=True)
class CpuPlacement:
    """Model instances on a CPU-only host with ``cores`` cores.

    Every component gets one single-threaded instance per core, so the student UNet alone (a
    student_only load) or the teacher alone can keep every core busy. Each BLS instance runs one
    request at a time and spends part of it in its own Python work and waiting for components, so
    there are ``BLS_PER_CORE`` of them per core: enough requests in flight to keep the component
    instances fed, and a bound on the memory they hold (each imports torch, ~0.4 GB).
    """

    cores: int
    BLS_PER_CORE = 4
    MAX_BLS = 16

    @classmethod
    def for_this_host(cls) -> "CpuPlacement":
        return cls(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))

    @property
    def component_instances(self) -> int:
        return self.cores

    @property
    def bls_instances(self) -> int:
        return min(self.BLS_PER_CORE * self.cores, self.MAX_BLS)


# Timeout of each BLS call into a component, in ms (0: none). Triton applies a request timeout to the
# time spent queued, and only for a model whose dynamic_batching has a default_queue_policy with
# allow_timeout_override: true (checked on 2.51: without one the value has no effect). It bounds how
# long a BLS execution waits behind a stuck or saturated component; a call that expires fails its
# rows with UNAVAILABLE naming the component. Generous, because it must never trip on a busy queue.
COMPONENT_TIMEOUT_MS = 30000

PER_ROW = "[ 1 ]"


def _dims(t: TensorSpec) -> str:
    # Triton dims exclude the batch axis when max_batch_size > 0; other symbols are variable.
    # A per-row scalar ([B], e.g. timestep) is [B, 1] on the wire and reshaped to [B] for the model.
    dims = [d for d in t.dims if d != BATCH]
    return "[ " + ", ".join("-1" if isinstance(d, str) else str(d) for d in dims) + " ]" if dims else PER_ROW


def _tensor_block(kind: str, tensors: list[tuple[str, str, str, bool]], reshape_scalars: bool = False) -> str:
    rows = []
    for name, dtype, dims, optional in tensors:
        extra = "\n    optional: true" if optional else ""
        if reshape_scalars and dims == PER_ROW:
            extra += "\n    reshape: { shape: [ ] }"
        rows.append(f"  {{\n    name: \"{name}\"\n    data_type: {dtype}\n    dims: {dims}{extra}\n  }}")
    return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"


# A queue policy that lets each BLS call set its own timeout (COMPONENT_TIMEOUT_MS); the default
# (10 min) only bounds requests that set none.
_COMPONENT_QUEUE_POLICY = "  default_queue_policy {\n    timeout_action: REJECT\n    default_timeout_microseconds: 600000000\n    allow_timeout_override: true\n  }\n"


def _dynamic_batching(delay_us: int, *, timeout_override: bool = False, preferred: tuple[int, ...] = ()) -> str:
    policy = _COMPONENT_QUEUE_POLICY if timeout_override else ""
    sizes = f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n" if preferred else ""
    return f"dynamic_batching {{\n{sizes}  max_queue_delay_microseconds: {delay_us}\n{policy}}}\n"


def _instance_group(count: int, kind: str, gpus: list[int] | tuple[int, ...] | None = None) -> str:
    # Without gpus, a KIND_GPU group places `count` instances on every visible GPU.
    devices = f"\n    gpus: [ {', '.join(map(str, gpus))} ]" if gpus else ""
    return f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}{devices}\n  }}\n]\n"


def _parameters(params: dict[str, str]) -> str:
    return "".join(f"parameters {{ key: \"{k}\" value: {{ string_value: \"{v}\" }} }}\n" for k, v in params.items())


def component_config(
    spec: ComponentSpec,
    *,
    instances: int = 1,
    kind: str = "KIND_CPU",
    threads: int = CPU_COMPONENT_THREADS,
    allow_spinning: bool = CPU_COMPONENT_ALLOW_SPINNING,
) -> str:
    """``config.pbtxt`` of a component served by the ONNX Runtime Python model (``threads=0``: ORT's default)."""
    return (
        f"name: \"{spec.name}\"\nbackend: \"python\"\nmax_batch_size: {spec.max_batch}\n"
        + _tensor_block("input", [(t.name, t.triton_dtype, _dims(t), False) for t in spec.inputs], reshape_scalars=True)
        + _tensor_block("output", [(t.name, t.triton_dtype, _dims(t), False) for t in spec.outputs], reshape_scalars=True)
        + _dynamic_batching(CPU_COMPONENT_QUEUE_DELAY_US, timeout_override=True)
        + _instance_group(instances, kind)
        + _parameters({"onnx_file": "model.onnx", "intra_op_threads": str(threads), "allow_spinning": str(int(allow_spinning))})
    )


def bls_config(deployment: Deployment, *, instances: int = 1, kind: str = "KIND_CPU") -> str:
    """The BLS model: one request per execution (no dynamic batcher), ``instances`` of them in parallel."""
    size = deployment.image_size
    inputs = [(f.name, f.triton_dtype, "[ 1 ]", f.optional) for f in REQUEST_FIELDS]
    outputs = [(f.name, f.triton_dtype, f"[ {size}, {size}, 3 ]" if f.name == "image" else "[ 1 ]", False) for f in RESPONSE_FIELDS]
    return (
        f"name: \"{BLS_MODEL}\"\nbackend: \"python\"\nmax_batch_size: {deployment.max_rows}\n"
        + _tensor_block("input", inputs)
        + _tensor_block("output", outputs)
        + _instance_group(instances, kind)
        + _parameters({"component_timeout_ms": str(COMPONENT_TIMEOUT_MS)})
    )


def write_onnxruntime_repository(repository: Path, deployment: Deployment, placement: CpuPlacement | None = None) -> None:
    """Configs and model.py files around ONNX graphs already at ``<repo>/<component>/1/model.onnx``.

    ``placement`` defaults to this host's cores: ``ensure_repository`` rewrites the configs at every
    start, so a preset follows the machine that serves it.
    """
    placement = placement or CpuPlacement.for_this_host()
    for name, spec in deployment.specs().items():
        (model_dir(repository, name) / "config.pbtxt").write_text(component_config(spec, instances=placement.component_instances))
        shutil.copyfile(ORT_TEMPLATE, version_dir(repository, name) / "model.py")
    write_bls(repository, bls_config(deployment, instances=placement.bls_instances))


def write_bls(repository: Path, config: str) -> None:
    """The BLS model folder: ``config`` (CPU or GPU flavour) plus the adapter ``model.py``."""
    version_dir(repository, BLS_MODEL).mkdir(parents=True, exist_ok=True)
    (model_dir(repository, BLS_MODEL) / "config.pbtxt").write_text(config)
    shutil.copyfile(BLS_TEMPLATE, version_dir(repository, BLS_MODEL) / "model.py")
