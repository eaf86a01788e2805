"""Every ``config.pbtxt`` as a typed ``ModelConfig``: built from the specs and the contract, written
and read with protobuf's text format (``tritonclient`` ships Triton's ``model_config_pb2``).

Flavours:
- ``component_config``: a component served by the ONNX Runtime Python model (CPU).
- ``tensorrt_component_config``: a component whose ``model.plan`` runs in Triton's TensorRT backend
  (``platform: "tensorrt_plan"``) or in the TensorRT-runtime Python model (``python-trt``), on GPUs.
- ``bls_config``: ``adaptive_diffusion``, from the serving contract; ``device="cuda"`` keeps its
  pipeline and the component tensors on the GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bll_python.contract import REQUEST_FIELDS, RESPONSE_FIELDS
from bll_python.deployment import Deployment
from bll_python.layout import BLS_MODEL, config_path
from bll_python.specs import BATCH, ComponentSpec, TensorSpec
from export.triton.placement import admission_queue_size

# The BLS batches nothing (its dynamic batcher only bounds the queue, see _admission): every request gets an execution of its own on one of several BLS
# instances, so an image the student answers leaves after ImageReward instead of waiting for the
# teacher work of batch neighbours (head-of-line blocking), and rows of different requests still
# share component calls, merged by the components' dynamic batchers (every UNet graph takes a
# per-row timestep, so rows at different steps share a call). Measured on 2 cores (benchmarks/README):
# one batching BLS 0.84 / 0.42 / 0.39 images/s on `small` (student / teacher / refine_k50, c=8),
# 8 BLS instances 1.50 / 0.87 / 0.72, against a machine limit of 1.76 / 0.91 / 0.72.
# GPU components: wait this long for the calls of concurrent BLS instances to fill a preferred batch.
COMPONENT_QUEUE_DELAY_US = 500
# CPU components answer a call as soon as an instance is free; calls already queued are merged. A
# delay would only hold a lone call, and on a CPU a bigger batch is no cheaper per row (`small`
# UNet: one process at batch 8 made 0.26 teacher images/s, two at batch 1 made 0.91).
CPU_COMPONENT_QUEUE_DELAY_US = 0
# ... and costs memory: ONNX Runtime's arena grows to the largest batch it has seen (a `small` UNet
# instance at 16 rows holds ~6 GB). So merged CPU batches stop at this many rows (a preferred size the
# batcher fills and does not pass); a single call that is larger (one request of 8 rows, CFG-doubled)
# still runs whole. Merging a few calls still pays on the tiny preset, where a call's overhead
# (~2 ms) is a large part of its compute.
CPU_PREFERRED_BATCH_ROWS = 4
# One ONNX Runtime thread per CPU component instance, spinning off, and as many instances of each
# component as cores (placement.CpuPlacement): a pool's threads spin-wait after every run and take the
# core another instance needs, while one thread per instance keeps every core busy with as many calls
# in flight. (Tiny preset, student_only, one instance: 2 spinning threads 440 ms an image, 2 threads
# without spinning 181 ms, 1 thread 140 ms.)
CPU_COMPONENT_THREADS = 1
CPU_COMPONENT_ALLOW_SPINNING = False

# Timeout of each BLS call into a component, in ms (0: none). Triton applies a request timeout to the
# time spent queued, and only for a model whose dynamic_batching has a default_queue_policy with
# allow_timeout_override: true (checked on 2.51: without one the value has no effect). It bounds how
# long a BLS execution waits behind a stuck or saturated component; a call that expires fails its
# rows with UNAVAILABLE naming the component. Generous, because it must never trip on a busy queue.
COMPONENT_TIMEOUT_MS = 30000
# The policy's own default (10 min) only bounds requests that set no timeout.
_COMPONENT_DEFAULT_TIMEOUT_US = 600_000_000

BACKENDS = ("tensorrt", "python-trt")


def _dims(t: TensorSpec) -> list[int]:
    # Triton dims exclude the batch axis when max_batch_size > 0; other symbols are variable (-1).
    # A per-row scalar ([B], e.g. timestep) is [B, 1] on the wire and reshaped to [B] for the model.
    return [-1 if isinstance(d, str) else d for d in t.dims if d != BATCH] or [1]


def _spec_tensors(kind: type, tensors: Iterable[TensorSpec]) -> list:
    out = []
    for t in tensors:
        tensor = kind(name=t.name, data_type=mc.DataType.Value(t.triton_dtype), dims=_dims(t))
        if t.dims == (BATCH,):
            tensor.reshape.SetInParent()  # reshape: { shape: [ ] }
        out.append(tensor)
    return out


def _parameters(config: mc.ModelConfig, params: Mapping[str, str]) -> None:
    for key, value in params.items():
        config.parameters[key].string_value = value


def _instance_group(count: int, kind: str, gpus: Sequence[int] | None = None) -> mc.ModelInstanceGroup:
    # Without gpus, a KIND_GPU group places `count` instances on every visible GPU.
    return mc.ModelInstanceGroup(count=count, kind=mc.ModelInstanceGroup.Kind.Value(kind), gpus=list(gpus or []))


def _component(spec: ComponentSpec, *, delay_us: int, group: mc.ModelInstanceGroup, preferred: Sequence[int] = ()) -> mc.ModelConfig:
    """The parts every component shares: its spec's tensors, dynamic batching, the queue policy."""
    config = mc.ModelConfig(
        name=spec.name,
        max_batch_size=spec.max_batch,
        input=_spec_tensors(mc.ModelInput, spec.inputs),
        output=_spec_tensors(mc.ModelOutput, spec.outputs),
        instance_group=[group],
    )
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = delay_us
    batching.preferred_batch_size.extend(preferred)
    # Lets each BLS call set its own timeout (COMPONENT_TIMEOUT_MS).
    policy = batching.default_queue_policy
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = _COMPONENT_DEFAULT_TIMEOUT_US
    policy.allow_timeout_override = True
    return config


def component_config(
    spec: ComponentSpec,
    *,
    instances: int = 1,
    kind: str = "KIND_CPU",
    threads: int = CPU_COMPONENT_THREADS,
    allow_spinning: bool = CPU_COMPONENT_ALLOW_SPINNING,
) -> mc.ModelConfig:
    """A component served by the ONNX Runtime Python model (``threads=0``: ORT's default)."""
    preferred = [min(CPU_PREFERRED_BATCH_ROWS, spec.max_batch)]
    config = _component(spec, delay_us=CPU_COMPONENT_QUEUE_DELAY_US, group=_instance_group(instances, kind), preferred=preferred)
    config.backend = "python"
    _parameters(config, {"onnx_file": "model.onnx", "intra_op_threads": str(threads), "allow_spinning": str(int(allow_spinning))})
    return config


def tensorrt_component_config(spec: ComponentSpec, *, backend: str = "tensorrt", instances: int = 1, gpus: Sequence[int] | None = None) -> mc.ModelConfig:
    """A component whose ``1/model.plan`` is a TensorRT engine built from ``spec``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    # The profile's opt batch is the shape TensorRT tuned its kernels for: the batcher waits up to the
    # queue delay for calls of concurrent BLS instances to fill it.
    opt = spec.profile[BATCH].opt
    config = _component(spec, delay_us=COMPONENT_QUEUE_DELAY_US, group=_instance_group(instances, "KIND_GPU", gpus), preferred=[opt] if opt > 1 else [])
    if backend == "tensorrt":
        config.platform = "tensorrt_plan"
    else:
        config.backend = "python"
        _parameters(config, {"plan_file": "model.plan", "FORCE_CPU_ONLY_INPUT_TENSORS": "no"})
    return config


def bls_config(
    deployment: Deployment, *, instances: int = 1, device: str = "cpu", gpus: Sequence[int] | None = None, max_queue_size: int | None = None
) -> mc.ModelConfig:
    """``adaptive_diffusion``: one value per row for every contract field, the image ``[H, W, 3]``.

    Each request runs in an execution of its own, ``instances`` at a time. A dynamic batcher is
    there only for its bounded queue (admission control): its preferred batch size of one row
    makes it hand every request to an instance alone (checked with Triton's statistics in
    tests/test_admission.py), and a request arriving when ``max_queue_size`` requests already wait
    (default ``admission_queue_size``) is answered UNAVAILABLE at once.

    ``device="cuda"`` runs its instances on GPUs with the pipeline on the GPU: the BLS model.py reads
    ``device``, the Python backend ``FORCE_CPU_ONLY_INPUT_TENSORS``.
    """
    # [-1, -1, 3] when the deployment serves per-request sizes.
    size = -1 if deployment.image_range else deployment.image_size
    config = mc.ModelConfig(
        name=BLS_MODEL,
        backend="python",
        max_batch_size=deployment.max_rows,
        input=[mc.ModelInput(name=f.name, data_type=mc.DataType.Value(f.triton_dtype), dims=[1], optional=f.optional) for f in REQUEST_FIELDS],
        output=[
            mc.ModelOutput(name=f.name, data_type=mc.DataType.Value(f.triton_dtype), dims=[size, size, 3] if f.name == "image" else [1])
            for f in RESPONSE_FIELDS
        ],
        instance_group=[_instance_group(instances, "KIND_GPU" if device == "cuda" else "KIND_CPU", gpus)],
    )
    _admission(config, max_queue_size or admission_queue_size(instances, deployment.expected_image_seconds()))
    _parameters(config, {"component_timeout_ms": str(COMPONENT_TIMEOUT_MS)})
    if device == "cuda":
        _parameters(config, {"FORCE_CPU_ONLY_INPUT_TENSORS": "no", "device": "cuda"})
    elif device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return config


def _admission(config: mc.ModelConfig, max_queue_size: int) -> None:
    # Triton's batcher sends a batch once it would pass the largest preferred size, and always takes
    # the first queued request whole: with a preferred size of 1 and no queue delay, every execution
    # holds exactly one request, of any row count, as soon as an instance is free.
    batching = config.dynamic_batching
    batching.preferred_batch_size.append(1)
    batching.max_queue_delay_microseconds = 0
    policy = batching.default_queue_policy
    policy.max_queue_size = max_queue_size
    # Past a client's own timeout a queued request is rejected rather than run for nobody.
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.allow_timeout_override = True


def gpu_bls_config(deployment: Deployment, *, instances: int = 1, gpus: Sequence[int] | None = None, max_queue_size: int | None = None) -> mc.ModelConfig:
    """The BLS of a TensorRT repository: tensors stay in GPU memory between components."""
    return bls_config(deployment, instances=instances, device="cuda", gpus=gpus, max_queue_size=max_queue_size)


def config_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def write_config(repository: Path, config: mc.ModelConfig) -> Path:
    """``<repository>/<config.name>/config.pbtxt``."""
    path = config_path(repository, config.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_text(config))
    return path
