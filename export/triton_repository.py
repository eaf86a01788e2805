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

# A few ms of queueing lets concurrent requests share one execution: for the BLS this is what
# batches requests together, for the components it merges the BLS calls of concurrent executions.
BLS_QUEUE_DELAY_US = 5000
COMPONENT_QUEUE_DELAY_US = 500


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


def _dynamic_batching(delay_us: int) -> str:
    return f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}\n"


def _instance_group(count: int, kind: str, gpus: list[int] | tuple[int, ...] | None = None) -> str:
    # Without gpus, a KIND_GPU group places `count` instances on every visible GPU.
    devices = f"\n    gpus: [ {', '.join(map(str, gpus))} ]" if gpus else ""
    return f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}{devices}\n  }}\n]\n"


def _parameters(params: dict[str, str]) -> str:
    return "".join(f"parameters {{ key: \"{k}\" value: {{ string_value: \"{v}\" }} }}\n" for k, v in params.items())


def component_config(spec: ComponentSpec, *, instances: int = 1, kind: str = "KIND_CPU", threads: int = 0) -> str:
    """``config.pbtxt`` of a component served by the ONNX Runtime Python model."""
    return (
        f"name: \"{spec.name}\"\nbackend: \"python\"\nmax_batch_size: {spec.max_batch}\n"
        + _tensor_block("input", [(t.name, t.triton_dtype, _dims(t), False) for t in spec.inputs], reshape_scalars=True)
        + _tensor_block("output", [(t.name, t.triton_dtype, _dims(t), False) for t in spec.outputs], reshape_scalars=True)
        + _dynamic_batching(COMPONENT_QUEUE_DELAY_US)
        + _instance_group(instances, kind)
        + _parameters({"onnx_file": "model.onnx", "intra_op_threads": str(threads)})
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
    )


def write_onnxruntime_repository(repository: Path, deployment: Deployment) -> None:
    """Configs and model.py files around ONNX graphs already at ``<repo>/<component>/1/model.onnx``."""
    for name, spec in deployment.specs().items():
        (model_dir(repository, name) / "config.pbtxt").write_text(component_config(spec))
        shutil.copyfile(ORT_TEMPLATE, version_dir(repository, name) / "model.py")
    write_bls(repository, deployment)


def write_bls(repository: Path, deployment: Deployment) -> None:
    version_dir(repository, BLS_MODEL).mkdir(parents=True, exist_ok=True)
    (model_dir(repository, BLS_MODEL) / "config.pbtxt").write_text(bls_config(deployment))
    shutil.copyfile(BLS_TEMPLATE, version_dir(repository, BLS_MODEL) / "model.py")
