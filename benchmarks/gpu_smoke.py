"""End-to-end GPU smoke test: tiny preset -> FP16 graphs -> FP16 engines -> validation -> served images -> perf_analyzer.

``bash benchmarks/gpu_smoke.sh`` (or ``python -m benchmarks.gpu_smoke``) on a machine with an NVIDIA GPU,
tensorrt (``pip install -e .[gpu] --extra-index-url https://pypi.nvidia.com``) and a CUDA build of torch.
Each stage prints PASS, FAIL or SKIP; the report lands in ``benchmarks/results/gpu_smoke/<time>/``.
On a machine without a GPU the CPU stages run (environment, installed packages, export, lint, the
FP16 graphs against FP32 on ONNX Runtime) and the first GPU stage stops the run with SKIP. The GPU
stages: engine build (strongly typed, each engine's layer precisions read back and checked),
engines against ONNX Runtime, serving, served images against in-process ONNX Runtime, perf_analyzer.

Exit status: 0 all passed, 1 a stage failed, 2 stopped before the GPU stages (nothing to test on).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clients.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu_smoke"
PROMPTS = ("a red bicycle leaning on a brick wall", "a bowl of ramen, studio lighting")
STRATEGIES = ("student_only", "teacher_only", "refine")


class Skip(Exception):
    """The stage cannot run here; the run stops with this reason."""


@dataclass
class Stage:
    name: str
    status: str
    seconds: float
    detail: Any = None
    message: str = ""


@dataclass
class Smoke:
    out: Path
    stages: list[Stage] = field(default_factory=list)
    stopped: bool = False

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one stage unless an earlier one failed or skipped; print and record its verdict."""
        if self.stopped:
            return None
        start = time.perf_counter()
        try:
            detail = fn()
            stage = Stage(name, "PASS", time.perf_counter() - start, detail)
        except Skip as exc:
            stage = Stage(name, "SKIP", time.perf_counter() - start, message=str(exc))
        except AssertionError as exc:
            stage = Stage(name, "FAIL", time.perf_counter() - start, message=str(exc))
        except Exception as exc:  # a smoke test reports every failure as a line, never a traceback
            (self.out / f"{name.replace(' ', '_')}.traceback.txt").write_text(traceback.format_exc())
            stage = Stage(name, "FAIL", time.perf_counter() - start, message=f"{type(exc).__name__}: {exc}")
        self.stages.append(stage)
        self.stopped = stage.status != "PASS"
        line = f"[{stage.status}] {name} ({stage.seconds:.1f} s)"
        print(line + (f": {stage.message}" if stage.message else ""), flush=True)
        return detail if stage.status == "PASS" else None

    def exit_code(self) -> int:
        statuses = {s.status for s in self.stages}
        return 1 if "FAIL" in statuses else 2 if "SKIP" in statuses else 0

    def save(self, extra: dict[str, Any]) -> Path:
        body = {"exit_code": self.exit_code(), **extra, "stages": [vars(s) for s in self.stages]}
        path = self.out / "report.json"
        path.write_text(json.dumps(body, indent=2, default=str))
        return path


# ---------------------------------------------------------------------------------------------
# Stages


def environment() -> dict[str, Any]:
    import polygraphy
    import torch

    from export.tensorrt.availability import cuda_device_count, tensorrt_unavailable_reason

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.cuda.is_available(), "polygraphy": polygraphy.__version__}
    info["cuda_devices"] = cuda_device_count()
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except Exception as exc:  # missing, or installed without its CUDA libraries
        info["tensorrt"] = None if isinstance(exc, ModuleNotFoundError) else f"import failed: {exc}"
    info["gpu_blocker"] = tensorrt_unavailable_reason()
    return info


def installed_packages() -> dict[str, Any]:
    """One ONNX Runtime flavour (two overwrite each other's files) and, where installed, the pinned TensorRT."""
    from export.tensorrt.availability import installed_onnxruntime_flavours, tensorrt_version_problem
    from export.tensorrt.releases import TENSORRT_PIN

    flavours = installed_onnxruntime_flavours()
    assert len(flavours) == 1, f"{flavours} are installed and all write the onnxruntime package: keep one (pip uninstall the others, then reinstall it)"
    found: dict[str, Any] = {"onnxruntime": flavours[0], "tensorrt_pin": TENSORRT_PIN}
    try:
        import tensorrt

        found["tensorrt"] = tensorrt.__version__
    except Exception:  # not installed (a CPU machine) or without its libraries: the GPU stage says so
        return found
    problem = tensorrt_version_problem(tensorrt.__version__)
    assert problem is None, problem
    return found


def fp16_graphs(source: Path, target: Path, out: Path) -> dict[str, Any]:
    """Every component's FP16 graph (FP32 islands from its rules) against its FP32 graph on ORT's CPU provider."""
    from bll_python.deployment import Deployment
    from bll_python.layout import assets_dir, onnx_path
    from export.tensorrt.fp16_on_ort import compare_fp16_graph
    from export.tensorrt.plan import repository_builds
    from export.tensorrt.validate import write_report

    deployment = Deployment.load(assets_dir(source))
    specs = deployment.specs()
    reports, plans = [], {}
    for name, build in repository_builds(source, specs, target, deployment=deployment).items():
        plan = build.write_fp16_graph()
        report = compare_fp16_graph(specs[name], onnx_path(source, name), build.fp16_onnx, planned_fp32=plan.selection.nodes)
        print(f"    {report}; ORT ran in FP32: {report.notes['ort_fp32_ops']}")
        reports.append(report)
        plans[name] = {
            "fp32_rules": [r.why for r in build.rules],
            "fp32_nodes": len(plan.selection.nodes),
            "joined_round_trips": plan.joined_round_trips,
            "unmatched_rules": plan.selection.unmatched,
        }
    write_report(reports, out / "fp16_vs_fp32_onnxruntime.json")
    failed = [r.component for r in reports if not r.passed]
    assert not failed, f"FP16 graphs outside tolerance or not finite on ONNX Runtime: {failed} (see fp16_vs_fp32_onnxruntime.json)"
    return plans


def require_gpu() -> str:
    from export.tensorrt.availability import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason:
        raise Skip(f"stopping before the GPU stages: this machine {reason}")
    import torch

    if not torch.cuda.is_available():
        raise Skip("stopping before the GPU stages: torch has no CUDA (install a CUDA build of torch for the BLS and python-trt models)")
    return torch.cuda.get_device_name(0)


def lint(source: Path) -> dict[str, Any]:
    from bll_python.deployment import Deployment
    from bll_python.layout import assets_dir, onnx_path
    from export.tensorrt.lint import lint_onnx

    specs = Deployment.load(assets_dir(source)).specs()
    results = {name: lint_onnx(onnx_path(source, name), spec.input_shapes("opt")) for name, spec in specs.items()}
    bad = {n: r.errors[:3] for n, r in results.items() if not r.passed}
    assert not bad, f"lint errors: {bad}"
    return {n: {"warnings": len(r.warnings)} for n, r in results.items()}


def build(source: Path, target: Path, backend: str, opt_level: int) -> dict[str, Any]:
    from export.tensorrt.plan import BuildOptions
    from export.tensorrt.repository import build_tensorrt_repository

    written, results = build_tensorrt_repository(source, target, backend=backend, options=BuildOptions(builder_optimization_level=opt_level))
    for r in results:  # a pinned layer outside FP32 already failed the build (EnginePrecisionError)
        print(f"    {r.precision.summary()}")
    return {"repository": written.to_json(), "engines": [r.to_json() for r in results]}


def validate(source: Path, target: Path, out: Path) -> dict[str, Any]:
    from bll_python.deployment import Deployment
    from bll_python.layout import assets_dir
    from export.tensorrt.validate import validate_repository, write_report

    reports = validate_repository(source, target, Deployment.load(assets_dir(source)).specs())
    for r in reports:
        print(f"    {r}")
    write_report(reports, out / "validation.json")
    failed = [r.component for r in reports if not r.passed]
    assert not failed, f"engines outside tolerance: {failed} (see validation.json)"
    return {r.component: r.passed for r in reports}


def compare_served(source: Path, server: ServerProcess, min_psnr: float, max_score_diff: float) -> dict[str, Any]:
    """Served images (TensorRT FP16) against the in-process ONNX Runtime pipeline, same seeds."""
    from dataclasses import replace

    from bll_python.inprocess import inprocess_pipeline
    from clients.client import AdaptiveClient

    pipe = inprocess_pipeline(source)
    seeds = list(range(len(PROMPTS)))
    rows: list[dict[str, Any]] = []
    with AdaptiveClient(server.http_url) as client:
        for strategy in STRATEGIES:
            served = client.generate(list(PROMPTS), seeds=seeds, strategy=strategy)
            local = pipe(list(PROMPTS), seeds=seeds, settings=replace(pipe.deployment.defaults, strategy=strategy))
            for i, g in enumerate(served):
                diff = g.image.astype(np.float64) - local.images[i].astype(np.float64)
                mse = float(np.mean(diff**2))
                psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
                rows.append({
                    "strategy": strategy, "prompt": g.prompt, "psnr_db": psnr, "max_abs": float(np.abs(diff).max()),
                    "score_served": g.score, "score_inprocess": float(local.scores[i]),
                    "route_served": g.route, "route_inprocess": local.routes[i].value,
                })
        # The engine profiles' smallest and largest sizes (per-request height/width).
        d = pipe.deployment
        if d.image_range is not None:
            for height, width in ((d.min_image_size, d.max_image_size), (d.max_image_size, d.min_image_size)):
                served = client.generate(list(PROMPTS[:2]), seeds=seeds[:2], strategy="refine", height=height, width=width)
                local = pipe(list(PROMPTS[:2]), seeds=seeds[:2], settings=replace(d.defaults, strategy="refine", height=height, width=width))
                for i, g in enumerate(served):
                    diff = g.image.astype(np.float64) - local.images[i].astype(np.float64)
                    mse = float(np.mean(diff**2))
                    rows.append({
                        "strategy": f"refine {height}x{width}", "prompt": g.prompt, "psnr_db": float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse),
                        "max_abs": float(np.abs(diff).max()), "score_served": g.score, "score_inprocess": float(local.scores[i]),
                        "route_served": g.route, "route_inprocess": local.routes[i].value,
                    })  # fmt: skip
    # Routes are recorded, not asserted: a score within tolerance of tau may gate either way.
    bad = [r for r in rows if r["route_served"] == r["route_inprocess"] and (r["psnr_db"] < min_psnr or abs(r["score_served"] - r["score_inprocess"]) > max_score_diff)]
    assert not bad, f"{len(bad)} of {len(rows)} served images differ from ONNX Runtime beyond PSNR {min_psnr} dB / score {max_score_diff}: {bad[:2]}"
    return {"images": rows}


def perf_sweep(server: ServerProcess, out: Path, concurrency_range: str) -> dict[str, Any]:
    from benchmarks.perf_analyzer import perf_analyzer_command, perf_analyzer_env

    data = out / "perf_input.json"
    data.write_text(json.dumps({"data": [{"prompt": {"content": [p], "shape": [1]}, "seed": {"content": [i], "shape": [1]}} for i, p in enumerate(PROMPTS)]}))
    csv_path = out / "perf_analyzer.csv"
    cmd = perf_analyzer_command() + [
        "-m", "adaptive_diffusion", "-u", server.grpc_url, "-i", "grpc",
        "--input-data", str(data), "--concurrency-range", concurrency_range,
        "--measurement-mode", "count_windows", "--measurement-request-count", "8", "--max-trials", "5",
        "--stability-percentage", "50", "-f", str(csv_path),  # a smoke sweep, not a benchmark: loose stability
    ]
    done = subprocess.run(cmd, env=perf_analyzer_env(), capture_output=True, text=True, timeout=900)
    (out / "perf_analyzer.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, f"perf_analyzer exited {done.returncode}; see perf_analyzer.log"
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    return {"command": " ".join(cmd), "rows": [{k: r.get(k) for k in ("Concurrency", "Inferences/Second", "p50 latency", "p99 latency")} for r in rows]}


def _serve(server: ServerProcess) -> dict[str, Any]:
    server.start()
    try:
        server.wait_ready()
    except RuntimeError as exc:
        raise AssertionError(str(exc)) from None
    return {"command": " ".join(server.command()), "http": server.http_url, "grpc": server.grpc_url}


def _container_only() -> None:
    raise Skip("the pip server has no TensorRT backend: serve this repository from NVIDIA's container (export/TENSORRT.md) or use --backend python-trt")


# ---------------------------------------------------------------------------------------------
# Main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_smoke.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="artifacts root (default: the export default, ./artifacts)")
    parser.add_argument("--preset", choices=("tiny", "tiny-xl"), default="tiny", help="the preset to export and check (tiny-xl: the SDXL family's graphs and profiles)")
    parser.add_argument("--backend", choices=("python-trt", "tensorrt"), default="python-trt",
                        help="python-trt runs under the pip server started here; tensorrt needs NVIDIA's container (see export/TENSORRT.md)")
    parser.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimization level")
    parser.add_argument("--min-psnr", type=float, default=30.0, help="served vs in-process image agreement (dB)")
    parser.add_argument("--max-score-diff", type=float, default=0.05, help="served vs in-process ImageReward score agreement")
    parser.add_argument("--concurrency-range", default="1:4:1", help="perf_analyzer --concurrency-range start:end:step")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds for the server to load the engines")
    args = parser.parse_args(argv)

    os.chdir(ROOT)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    out = RESULTS / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    smoke = Smoke(out)
    extra: dict[str, Any] = {"backend": args.backend}

    from export.build import ensure_repository
    from export.defaults import DEFAULT_ROOT

    root = args.root or DEFAULT_ROOT
    target = Path(root) / args.preset / f"repository-{args.backend}"
    extra["environment"] = smoke.run("environment", environment)
    source = smoke.run(f"export {args.preset} preset", lambda: ensure_repository(args.preset, root, progress=False))
    smoke.run("installed packages", installed_packages)
    smoke.run("lint onnx", lambda: lint(source))
    extra["fp16_graphs"] = smoke.run("fp16 graphs vs fp32 on onnxruntime", lambda: fp16_graphs(source, target, out))
    extra["gpu"] = smoke.run("gpu available", require_gpu)
    smoke.run("build engines", lambda: build(source, target, args.backend, args.opt_level))
    smoke.run("validate engines vs onnxruntime", lambda: validate(source, target, out))
    if args.backend == "tensorrt":
        smoke.run("serve", _container_only)
    # The launcher passes on the CUDA-pool flags the TensorRT writer recorded in the repository.
    server = None if smoke.stopped else ServerProcess(target, ready_timeout=args.ready_timeout, log=out / "server.log")
    try:
        smoke.run("serve", (lambda: _serve(server)) if server else lambda: None)
        smoke.run("served vs onnxruntime in-process", lambda: compare_served(source, server, args.min_psnr, args.max_score_diff))
        smoke.run("perf_analyzer sweep", lambda: perf_sweep(server, out, args.concurrency_range))
    finally:
        if server is not None:
            server.stop()

    report = smoke.save(extra)
    verdict = {0: "PASS", 1: "FAIL", 2: "SKIP"}[smoke.exit_code()]
    print(f"gpu smoke: {verdict}; report {report}")
    return smoke.exit_code()


if __name__ == "__main__":
    sys.exit(main())
