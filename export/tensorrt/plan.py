"""FP16 TensorRT engines from a component's ONNX graph and its spec, as a lazy Polygraphy plan.

The FP16 plan is in the graph, not in builder flags (``export.tensorrt.fp16_graph``): the FP32
graph of the ONNX Runtime repository is rewritten into an FP16 graph with FP32 islands, and TensorRT
builds it *strongly typed*, the one precision mode both TensorRT 10 and 11 have::

    FP16 graph -> NetworkFromOnnxPath(strongly_typed) -> EngineFromNetwork(CreateConfig)
               -> engine inspector: every FP32 island really FP32? -> SaveEngine

The Polygraphy loaders are *classes*; nothing imports ``tensorrt`` until the plan is called, so CPU
tests construct the whole plan and inspect its profile and builder settings, and writing the FP16
graph (:meth:`EngineBuild.write_fp16_graph`) runs on any machine.

Profile: one optimization profile per engine, read from the spec: batch 1 .. max at the spec's
``opt`` (the UNets' max already counts the CFG-doubled rows), every other dim fixed. Builder config:
no precision flags (a strongly typed network rejects them), a persistent timing cache (loaded before
and merged back after each build), an explicit builder optimization level, and Polygraphy's default
``ProfilingVerbosity.DETAILED`` so the engine inspector can report each layer's tensor types.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

from bll_python.deployment import Deployment
from bll_python.layout import onnx_path, plan_path
from bll_python.precision import Fp32Rule
from bll_python.specs import ComponentSpec
from export.tensorrt.availability import require_tensorrt
from export.tensorrt.engine_precision import EnginePrecisionError, PrecisionCheck, check_layer_precisions, engine_layer_info
from export.tensorrt.fp16_graph import Fp16Plan, write_fp16_graph
from export.tensorrt.precision import fp32_rules

TIMING_CACHE_NAME = "tensorrt.timing.cache"
BUILD_DIR_NAME = "tensorrt.build"


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
    # TensorRT's default level, written out so the plan records it; 4-5 search longer for a few %.
    builder_optimization_level: int = 3
    # None: the component record's rules; () builds an all-FP16 graph (for comparisons).
    fp32_rules: tuple[Fp32Rule, ...] | None = None


@dataclass
class BuildResult:
    component: str
    plan: Path
    seconds: float
    plan_bytes: int
    fp16_plan: Fp16Plan
    precision: PrecisionCheck

    @property
    def fp32_nodes(self) -> list[str]:
        return list(self.fp16_plan.selection.nodes)

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "plan": str(self.plan),
            "seconds": round(self.seconds, 2),
            "plan_bytes": self.plan_bytes,
            "fp32_nodes": len(self.fp32_nodes),
            "precision": {k: v for k, v in self.precision.to_json().items() if k in ("passed", "checked_layers", "wrong")}
            | {"seen": len(self.precision.seen), "hidden": len(self.precision.hidden)},
        }


@dataclass
class EngineBuild:
    """The lazy plan for one engine; calling it builds, checks and saves the plan (GPU only)."""

    spec: ComponentSpec
    onnx: Path  # the FP32 graph of the ONNX Runtime repository
    fp16_onnx: Path  # the FP16 graph TensorRT parses (written by write_fp16_graph)
    plan: Path
    timing_cache: Path
    rules: tuple[Fp32Rule, ...]
    profile: Profile
    network: NetworkFromOnnxPath
    config: CreateConfig
    engine: EngineFromNetwork

    @property
    def layer_report(self) -> Path:
        return self.fp16_onnx.with_name("engine-layers.json")

    def write_fp16_graph(self) -> Fp16Plan:
        """The FP16 graph with its FP32 islands, and its plan; runs on any machine."""
        return write_fp16_graph(self.onnx, self.fp16_onnx, self.spec.name, rules=self.rules)

    def __call__(self) -> BuildResult:
        require_tensorrt()
        start = time.perf_counter()
        fp16 = self.write_fp16_graph()
        self.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        engine = self.engine()
        info = engine_layer_info(engine)
        check = check_layer_precisions(info, fp16)
        self.layer_report.write_text(json.dumps({"check": check.to_json(), "engine": info}, indent=1))
        if not check.passed:
            raise EnginePrecisionError(f"{self.spec.name}: {check.summary()}; first: {check.wrong[:3]} (see {self.layer_report})")
        self.plan.parent.mkdir(parents=True, exist_ok=True)
        SaveEngine(engine, str(self.plan))()
        return BuildResult(self.spec.name, self.plan, time.perf_counter() - start, self.plan.stat().st_size, fp16, check)

    def describe(self) -> dict[str, Any]:
        """What will be built, as JSON: for build reports and for reading without a GPU."""
        return {
            "component": self.spec.name,
            "onnx": str(self.onnx),
            "fp16_onnx": str(self.fp16_onnx),
            "plan": str(self.plan),
            "timing_cache": str(self.timing_cache),
            "profile": {name: {"min": list(lo), "opt": list(opt), "max": list(hi)} for name, (lo, opt, hi) in profile_shapes(self.spec).items()},
            "strongly_typed": self.network.strongly_typed,
            "builder_optimization_level": self.config.builder_optimization_level,
            "fp32_rules": [r.why for r in self.rules],
        }


def engine_build(
    spec: ComponentSpec,
    onnx: Path,
    plan: Path,
    *,
    timing_cache: Path,
    build_dir: Path,
    options: BuildOptions = BuildOptions(),
    deployment: Deployment | None = None,
) -> EngineBuild:
    """The build plan of one component (its FP32 rules in ``deployment``, e.g. an SDXL VAE that must
    stay FP32). Constructing it needs neither tensorrt nor a GPU."""
    rules = fp32_rules(spec.name, deployment) if options.fp32_rules is None else options.fp32_rules
    fp16_onnx = Path(build_dir) / spec.name / "model.fp16.onnx"
    profile = trt_profile(spec)
    # parse_from_file keeps the graph's directory, so external weights (> 2 GB graphs) resolve.
    network = NetworkFromOnnxPath(str(fp16_onnx), strongly_typed=True)
    # No fp16/precision_constraints: a strongly typed network takes its types from the graph, and
    # TensorRT 11 has neither flag. profiling_verbosity unset = Polygraphy's DETAILED.
    config = CreateConfig(profiles=[profile], load_timing_cache=str(timing_cache), builder_optimization_level=options.builder_optimization_level)
    engine = EngineFromNetwork(network, config=config, save_timing_cache=str(timing_cache))
    return EngineBuild(spec, Path(onnx), fp16_onnx, Path(plan), Path(timing_cache), tuple(rules), profile, network, config, engine)


def default_timing_cache(target: Path) -> Path:
    """Next to the repository, not in it: the cache outlives rebuilds and is never served."""
    return Path(target).resolve().parent / TIMING_CACHE_NAME


def default_build_dir(target: Path) -> Path:
    """FP16 graphs and engine layer reports: next to the repository, never served."""
    return Path(target).resolve().parent / BUILD_DIR_NAME


def repository_builds(
    source: Path,
    specs: Mapping[str, ComponentSpec],
    target: Path | None = None,
    *,
    timing_cache: Path | None = None,
    options: BuildOptions = BuildOptions(),
    deployment: Deployment | None = None,
) -> dict[str, EngineBuild]:
    """Plans for every component: ``<source>/<c>/1/model.onnx`` -> ``<target>/<c>/1/model.plan``;
    ``deployment`` (the source's manifest) picks the rules its checkpoints ask for."""
    target = Path(source if target is None else target)
    cache = timing_cache or default_timing_cache(target)
    build_dir = default_build_dir(target)
    return {
        name: engine_build(spec, onnx_path(source, name), plan_path(target, name), timing_cache=cache, build_dir=build_dir, options=options, deployment=deployment)
        for name, spec in specs.items()
    }


def build_engines(builds: Mapping[str, EngineBuild]) -> list[BuildResult]:
    """Build in order; the shared timing cache grows with each engine."""
    return [build() for build in builds.values()]
