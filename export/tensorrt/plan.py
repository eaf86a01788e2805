"""FP16 TensorRT engines from a component's ONNX graph and its spec, as a lazy Polygraphy plan.

The plan is a chain of Polygraphy loader *classes*; nothing in it imports ``tensorrt`` until it is
called, so CPU-only tests build the whole plan and inspect its profile and builder flags::

    NetworkFromOnnxPath -> PostprocessNetwork(keep_fp32) -> EngineFromNetwork(CreateConfig) -> SaveEngine

Profile: one optimization profile per engine, read from the spec: batch 1 .. max at the spec's
``opt`` (the UNets' max already counts the CFG-doubled rows), every other dim fixed.

Builder config: ``fp16=True``; a persistent timing cache (loaded before and merged back after each
build, so rebuilding five engines, or rebuilding after a weight change, skips most tactic timing);
an explicit builder optimization level; ``precision_constraints="obey"`` so the layers below
really run in FP32 instead of being a hint TensorRT may ignore.

FP16 overflow guards (``FP32_RULES``, one tuple of rules per component; each rule says why):

- Normalization layers (LayerNorm, and GroupNorm, which opset 17 exports as InstanceNormalization),
  everywhere: the variance is a sum of squares over a whole row or group, and activations of a few
  hundred already overflow FP16's 65504 when squared and summed. TensorRT warns about exactly this
  ("Running layernorm after self-attention in FP16 may cause overflow"). Decomposed norms (opset
  < 17, or hand-written ones) are caught by their ReduceMean/Pow/Sqrt inside a ``*norm*`` scope.
- Softmax in the text encoder, the VAE decoder and ImageReward: their logits are not bounded (the
  VAE's single-head attention over 4096 tokens, BERT's -1e4 mask offsets). These are run once per
  image, so FP32 costs little. The UNets' softmax is left alone: TensorRT's fused attention kernels
  already accumulate softmax in FP32, and pinning the layer would break that fusion on the model
  that runs 4-50 times per image.
- The UNet's sinusoidal timestep embedding (``time_proj``): ``t * freq`` reaches ~1000, where FP16's
  spacing is 0.5 rad, so sin/cos of it would be noise. Its outputs are pinned to FP32 as well.
- ImageReward's head and its root-scope ops (pixel normalisation before the ViT, ``(r - mean) / std``
  after the head): the score is compared with ``tau`` to 3-4 digits, beyond FP16's ~3.

Only floating-point, non-shape layers are pinned: shape arithmetic, casts and integer layers keep
their types, since forcing them under "obey" fails the build.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, PostprocessNetwork, Profile, SaveEngine
from polygraphy.exception import PolygraphyException
from polygraphy.logger import G_LOGGER

from bll_python.layout import onnx_path, plan_path
from bll_python.specs import ComponentSpec

GPU_INSTALL_HINT = "pip install -e .[gpu] --extra-index-url https://pypi.nvidia.com"
TIMING_CACHE_NAME = "tensorrt.timing.cache"


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


# ---------------------------------------------------------------------------------------------
# Layers kept in FP32


@dataclass(frozen=True)
class Fp32Rule:
    """Layers to run in FP32: any whose TensorRT type is in ``layer_types`` or whose name matches.

    Layer names are the ONNX node names (``/unet/time_proj/Sin``), which the exporter derives from
    module paths; ``outputs`` also pins the output tensors, for values that must stay FP32 downstream.
    """

    why: str
    layer_types: tuple[str, ...] = ()
    name_pattern: str | None = None
    outputs: bool = False

    def matches(self, layer_type: str, layer_name: str) -> bool:
        if layer_type in self.layer_types:
            return True
        return bool(self.name_pattern and re.search(self.name_pattern, layer_name or ""))


NORMALIZATION = Fp32Rule(
    "variance of a row or group is a sum of squares that overflows FP16",
    layer_types=("NORMALIZATION",),
    name_pattern=r"(?i)/[^/]*norm[^/]*/(ReduceMean|Pow|Sqrt)",
)
SOFTMAX = Fp32Rule("unbounded logits (long single-head attention, -1e4 mask offsets)", layer_types=("SOFTMAX",))
TIME_PROJ = Fp32Rule("t * freq reaches ~1000 where FP16 spacing is 0.5 rad", name_pattern=r"/time_proj/", outputs=True)
REWARD_HEAD = Fp32Rule("the score is compared with tau to 3-4 digits", name_pattern=r"^/head/", outputs=True)
REWARD_ROOT_OPS = Fp32Rule(
    "pixel normalisation and (reward - mean) / std around the score; cheap elementwise ops",
    name_pattern=r"^/[^/]+$",
    outputs=True,
)

FP32_RULES: dict[str, tuple[Fp32Rule, ...]] = {
    "text_encoder": (NORMALIZATION, SOFTMAX),
    "unet_student": (NORMALIZATION, TIME_PROJ),
    "unet_teacher": (NORMALIZATION, TIME_PROJ),
    "vae_decoder": (NORMALIZATION, SOFTMAX),
    "image_reward": (NORMALIZATION, SOFTMAX, REWARD_HEAD, REWARD_ROOT_OPS),
}

# Never pinned: they carry no float math. Layers whose data input (input 0) or outputs are not
# floating point, or are shape tensors, are skipped too: integer math must keep its types.
_UNPINNABLE = {"CONSTANT", "SHAPE", "IDENTITY", "CAST", "ASSERTION", "CONDITION", "CONDITIONAL_INPUT", "CONDITIONAL_OUTPUT"}


class KeepFp32:
    """``PostprocessNetwork`` step: set ``layer.precision = float32`` on layers matching ``rules``.

    After the build, ``marked`` lists the names of the layers it pinned.
    """

    def __init__(self, rules: tuple[Fp32Rule, ...]) -> None:
        self.rules = tuple(rules)
        self.marked: list[str] = []

    def __call__(self, network: Any) -> None:
        from polygraphy.mod.trt_importer import lazy_import_trt

        self.apply(network, lazy_import_trt())

    def apply(self, network: Any, trt: Any) -> list[str]:
        """Pin the matching layers of ``network``; ``trt`` is the tensorrt module (a stand-in in tests)."""
        floats = {trt.float32, trt.float16}
        self.marked = []
        hit: set[Fp32Rule] = set()
        for index in range(network.num_layers):
            layer = network.get_layer(index)
            if layer.type.name in _UNPINNABLE:
                continue
            outs = [layer.get_output(i) for i in range(layer.num_outputs)]
            data = layer.get_input(0) if layer.num_inputs else None
            if data is None or data.dtype not in floats or not outs or any(t.dtype not in floats or t.is_shape_tensor for t in outs):
                continue
            rule = next((r for r in self.rules if r.matches(layer.type.name, layer.name)), None)
            if rule is None:
                continue
            layer.precision = trt.float32
            if rule.outputs:
                for i in range(layer.num_outputs):
                    layer.set_output_type(i, trt.float32)
            self.marked.append(layer.name)
            hit.add(rule)
        for rule in self.rules:
            if rule not in hit:  # renamed modules or a new exporter would silently drop a guard
                G_LOGGER.warning(f"FP32 rule matched no layer: {rule.why}")
        return self.marked


# ---------------------------------------------------------------------------------------------
# The plan


def profile_shapes(spec: ComponentSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``{input: (min, opt, max)}`` shapes of the spec's profile, as a TensorRT profile wants them."""
    rows = {which: spec.input_shapes(which) for which in ("min", "opt", "max")}
    return {name: (rows["min"][name], rows["opt"][name], rows["max"][name]) for name in spec.input_names}


def trt_profile(spec: ComponentSpec) -> Profile:
    profile = Profile()
    for name, (lo, opt, hi) in profile_shapes(spec).items():
        profile.add(name, min=lo, opt=opt, max=hi)
    return profile


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = True
    # TensorRT's default level, written out so the plan records it; 4-5 search longer for a few %.
    builder_optimization_level: int = 3
    precision_constraints: str = "obey"
    # None: the spec's rules from FP32_RULES; () builds a plain FP16 engine (for comparisons).
    fp32_rules: tuple[Fp32Rule, ...] | None = None


@dataclass
class BuildResult:
    component: str
    plan: Path
    seconds: float
    plan_bytes: int
    fp32_layers: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "plan": str(self.plan), "seconds": round(self.seconds, 2), "plan_bytes": self.plan_bytes, "fp32_layers": len(self.fp32_layers)}


@dataclass
class EngineBuild:
    """The lazy loader chain for one engine; calling it builds and saves the plan (GPU only)."""

    spec: ComponentSpec
    onnx: Path
    plan: Path
    timing_cache: Path
    profile: Profile
    keep_fp32: KeepFp32
    network: PostprocessNetwork
    config: CreateConfig
    engine: EngineFromNetwork
    save: SaveEngine

    def __call__(self) -> BuildResult:
        require_tensorrt()
        self.plan.parent.mkdir(parents=True, exist_ok=True)
        self.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        self.save()
        return BuildResult(self.spec.name, self.plan, time.perf_counter() - start, self.plan.stat().st_size, list(self.keep_fp32.marked))

    def describe(self) -> dict[str, Any]:
        """What will be built, as JSON: for build reports and for reading without a GPU."""
        return {
            "component": self.spec.name,
            "onnx": str(self.onnx),
            "plan": str(self.plan),
            "timing_cache": str(self.timing_cache),
            "profile": {name: {"min": list(lo), "opt": list(opt), "max": list(hi)} for name, (lo, opt, hi) in profile_shapes(self.spec).items()},
            "fp16": self.config.fp16,
            "builder_optimization_level": self.config.builder_optimization_level,
            "precision_constraints": self.config.precision_constraints,
            "fp32_rules": [r.why for r in self.keep_fp32.rules],
        }


def engine_build(spec: ComponentSpec, onnx: Path, plan: Path, *, timing_cache: Path, options: BuildOptions = BuildOptions()) -> EngineBuild:
    """The build plan of one component. Constructing it needs neither tensorrt nor a GPU."""
    rules = FP32_RULES.get(spec.name, (NORMALIZATION,)) if options.fp32_rules is None else options.fp32_rules
    keep = KeepFp32(rules)
    profile = trt_profile(spec)
    # parse_from_file keeps the graph's directory, so external weights (>2 GB graphs) resolve.
    network = PostprocessNetwork(NetworkFromOnnxPath(str(onnx)), func=keep, name="keep_fp32")
    config = CreateConfig(
        fp16=options.fp16,
        profiles=[profile],
        precision_constraints=options.precision_constraints,
        load_timing_cache=str(timing_cache),
        builder_optimization_level=options.builder_optimization_level,
    )
    engine = EngineFromNetwork(network, config=config, save_timing_cache=str(timing_cache))
    return EngineBuild(spec, Path(onnx), Path(plan), Path(timing_cache), profile, keep, network, config, engine, SaveEngine(engine, str(plan)))


def default_timing_cache(target: Path) -> Path:
    """Next to the repository, not in it: the cache outlives rebuilds and is never served."""
    return Path(target).resolve().parent / TIMING_CACHE_NAME


def repository_builds(
    source: Path,
    specs: Mapping[str, ComponentSpec],
    target: Path | None = None,
    *,
    timing_cache: Path | None = None,
    options: BuildOptions = BuildOptions(),
) -> dict[str, EngineBuild]:
    """Plans for every component: ``<source>/<c>/1/model.onnx`` -> ``<target>/<c>/1/model.plan``."""
    target = Path(source if target is None else target)
    cache = timing_cache or default_timing_cache(target)
    return {name: engine_build(spec, onnx_path(source, name), plan_path(target, name), timing_cache=cache, options=options) for name, spec in specs.items()}


def build_engines(builds: Mapping[str, EngineBuild]) -> list[BuildResult]:
    """Build in order; the shared timing cache grows with each engine."""
    return [build() for build in builds.values()]
