"""FP16 TensorRT engines from a component's ONNX graph and its spec, as a lazy Polygraphy plan.

The plan is a chain of Polygraphy loader *classes*; nothing in it imports ``tensorrt`` until it is
called, so CPU-only tests build the whole plan and inspect its profile and builder flags::

    NetworkFromOnnxPath -> PostprocessNetwork(KeepFp32) -> EngineFromNetwork(CreateConfig) -> SaveEngine

Profile: one optimization profile per engine, read from the spec: batch 1 .. max at the spec's
``opt`` (the UNets' max already counts the CFG-doubled rows), every other dim fixed.

Builder config: ``fp16=True``; a persistent timing cache (loaded before and merged back after each
build, so rebuilding five engines, or rebuilding after a weight change, skips most tactic timing);
an explicit builder optimization level; ``precision_constraints="obey"`` so the layers the component's
FP32 rules name (``export.tensorrt.precision``) really run in FP32 instead of being a hint TensorRT
may ignore.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, PostprocessNetwork, Profile, SaveEngine

from bll_python.layout import onnx_path, plan_path
from bll_python.precision import Fp32Rule
from bll_python.specs import ComponentSpec
from export.tensorrt.availability import require_tensorrt
from export.tensorrt.precision import KeepFp32, fp32_rules

TIMING_CACHE_NAME = "tensorrt.timing.cache"


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
    # None: the component record's rules; () builds a plain FP16 engine (for comparisons).
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
    rules = fp32_rules(spec.name) if options.fp32_rules is None else options.fp32_rules
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
