"""Write a Triton model repository: ``config.pbtxt`` per component from its spec, plus the BLS model.

Runtimes:
- ``onnxruntime`` (default, runs anywhere): each component is a Python-backend model that runs its
  ``model.onnx`` with ONNX Runtime (template: ``model_repository/onnxruntime_component``).
- ``tensorrt``: see ``export.trt_repository`` (``platform: "tensorrt_plan"``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bll_python.contract import REQUEST_FIELDS, RESPONSE_FIELDS
from bll_python.deployment import Deployment
from bll_python.layout import BLS_MODEL, model_dir, version_dir
from bll_python.specs import BATCH, ComponentSpec, TensorSpec

TEMPLATES = Path(__file__).resolve().parent.parent / "model_repository"
ORT_TEMPLATE = TEMPLATES / "onnxruntime_component" / "model.py"
BLS_TEMPLATE = TEMPLATES / BLS_MODEL / "1" / "model.py"

# Queueing lets requests that arrive together share one execution, but a lone request waits the
# whole delay (the batcher holds it until max_batch_size or the delay), so keep it short. For the BLS,
# 1 ms still merges a client's burst and closed-loop clients answered by one execution (they send
# again within ~0.5 ms); 5 ms cost a tiny-preset request 6% of its latency at concurrency 1.
BLS_QUEUE_DELAY_US = 1000
# GPU components (export.trt_repository): merges the BLS calls of concurrent BLS instances.
COMPONENT_QUEUE_DELAY_US = 500
# CPU components: one BLS instance calls them one at a time, so there is never a second call to wait
# for, and 500 us on each of the 8-19 calls of an image was pure latency. Calls already queued are
# still merged at 0.
CPU_COMPONENT_QUEUE_DELAY_US = 0
# One ONNX Runtime thread per CPU component, spinning off. The components run one after another and
# share the cores with the BLS, the server and each other; a pool's threads spin-wait after every
# run and take the core the next stage needs. Tiny preset, student_only, 2 cores: 2 spinning threads
# 440 ms an image, 2 threads without spinning 181 ms, 1 thread 140 ms (small preset: 1.33 / 0.83 /
# 0.79 s). More threads pay off only on an otherwise idle many-core host.
CPU_COMPONENT_THREADS = 1
CPU_COMPONENT_ALLOW_SPINNING = False

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


def _dynamic_batching(delay_us: int, *, timeout_override: bool = False) -> str:
    policy = _COMPONENT_QUEUE_POLICY if timeout_override else ""
    return f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n{policy}}}\n"


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
    size = deployment.image_size
    inputs = [(f.name, f.triton_dtype, "[ 1 ]", f.optional) for f in REQUEST_FIELDS]
    outputs = [(f.name, f.triton_dtype, f"[ {size}, {size}, 3 ]" if f.name == "image" else "[ 1 ]", False) for f in RESPONSE_FIELDS]
    return (
        f"name: \"{BLS_MODEL}\"\nbackend: \"python\"\nmax_batch_size: {deployment.max_rows}\n"
        + _tensor_block("input", inputs)
        + _tensor_block("output", outputs)
        + _dynamic_batching(BLS_QUEUE_DELAY_US)
        + _instance_group(instances, kind)
        + _parameters({"component_timeout_ms": str(COMPONENT_TIMEOUT_MS)})
    )


def write_onnxruntime_repository(repository: Path, deployment: Deployment) -> None:
    """Configs and model.py files around ONNX graphs already at ``<repo>/<component>/1/model.onnx``."""
    for name, spec in deployment.specs().items():
        (model_dir(repository, name) / "config.pbtxt").write_text(component_config(spec))
        shutil.copyfile(ORT_TEMPLATE, version_dir(repository, name) / "model.py")
    write_bls(repository, bls_config(deployment))


def write_bls(repository: Path, config: str) -> None:
    """The BLS model folder: ``config`` (CPU or GPU flavour) plus the adapter ``model.py``."""
    version_dir(repository, BLS_MODEL).mkdir(parents=True, exist_ok=True)
    (model_dir(repository, BLS_MODEL) / "config.pbtxt").write_text(config)
    shutil.copyfile(BLS_TEMPLATE, version_dir(repository, BLS_MODEL) / "model.py")
