"""One preset's benchmark: perf_analyzer sweeps per mode, each level followed by its in-process twin.

Served and in-process runs of a level follow each other, so their ratio is taken under the same
machine load (the machine is shared; absolute numbers drift by 2x over minutes, ratios much less).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from benchmarks.cpu import tree_cpu_seconds
from benchmarks.costs import UnitCosts, predicted_speedup_from_steps, steps_from_unet_rows
from benchmarks.inprocess import InprocessResult, run_inprocess, warm_up
from bll_python.inprocess import inprocess_pipeline
from benchmarks.machine import machine_info
from benchmarks.modes import BASELINE, Mode
from benchmarks.perf import PerfResult, run_perf_analyzer
from benchmarks.triton_stats import Breakdown, breakdown, delta, snapshot, stage_delta, stage_seconds, unet_rows
from benchmarks.workload import TEST_PROMPTS, Workload, write_input_data
from bll_python.deployment import Deployment
from bll_python.layout import assets_dir

Log = Callable[[str], None]


@dataclass
class SweepConfig:
    preset: str
    modes: list[Mode]
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    inprocess_concurrency: tuple[int, ...] = (1, 4)
    entries: int = 16  # distinct prompts (perf_analyzer input entries)
    per_client: int = 4  # at least this many requests per concurrent client
    protocol: str = "grpc"
    prompts: Path = TEST_PROMPTS
    # Modes swept over every concurrency level; the others only at the in-process levels (None: all).
    full_sweep_modes: tuple[str, ...] | None = None
    repository: Path | None = None  # benchmark this repository as it is, instead of the preset's
    # The machine's limit per mode (benchmarks.machine_limit): images per limit shape, 0 to skip.
    limit_rows: int = 16
    # Head-of-line blocking (benchmarks.head_of_line) at this concurrency; 0 to skip.
    head_of_line_concurrency: int = 8
    head_of_line_rows: int = 32


    def levels(self, mode: Mode) -> tuple[int, ...]:
        if self.full_sweep_modes is None or mode.name in self.full_sweep_modes:
            return self.concurrency
        return tuple(c for c in self.concurrency if c in self.inprocess_concurrency) or self.concurrency[:1]

    def requests(self, concurrency: int) -> int:
        """A multiple of the entry count, so every prompt is sent equally often."""
        return self.entries * max(1, math.ceil(concurrency * self.per_client / self.entries))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modes"] = [m.name for m in self.modes]
        d["prompts"] = str(self.prompts)
        d["repository"] = str(self.repository) if self.repository else None
        return d


@dataclass
class LevelResult:
    mode: str
    concurrency: int
    served: PerfResult
    breakdown: Breakdown
    served_stage_ms: dict[str, float]  # BLS stage timers, ms per image
    served_mean_steps: float
    served_teacher_share: float  # from the teacher UNet's row count
    served_cpu_ms: float  # CPU time of tritonserver and its stubs per image
    inprocess: InprocessResult | None = None

    @property
    def response_teacher_share(self) -> float:
        """The same share read from the responses' ``route`` outputs."""
        routes = self.served.routes
        return sum(n for r, n in routes.items() if r != "student") / max(sum(routes.values()), 1)

    @property
    def ratio(self) -> float | None:
        """Served / in-process throughput."""
        return self.served.throughput / self.inprocess.throughput if self.inprocess else None

    @property
    def cpu_ratio(self) -> float | None:
        """In-process / served CPU time per image: the throughput ratio a dedicated machine would see."""
        return self.inprocess.cpu_ms_per_image / self.served_cpu_ms if self.inprocess else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "served": self.served.as_dict(),
            "breakdown": self.breakdown.as_dict(),
            "served_stage_ms": self.served_stage_ms,
            "served_mean_steps": self.served_mean_steps,
            "served_teacher_share": self.served_teacher_share,
            "response_teacher_share": self.response_teacher_share,
            "inprocess": self.inprocess.as_dict() if self.inprocess else None,
            "served_over_inprocess": self.ratio,
            "served_cpu_ms_per_image": self.served_cpu_ms,
            "cpu_inprocess_over_served": self.cpu_ratio,
        }


@dataclass
class PresetReport:
    preset: str
    machine: dict[str, Any]
    config: dict[str, Any]
    settings: dict[str, Any]
    levels: list[LevelResult] = field(default_factory=list)
    speedups: list[dict[str, Any]] = field(default_factory=list)
    unit_costs: dict[int, dict[str, float]] = field(default_factory=dict)
    machine_limit: dict[str, dict[str, Any]] = field(default_factory=dict)  # mode -> limit and the shapes tried
    head_of_line: dict[str, Any] = field(default_factory=dict)

    def limit_ratio(self, level: LevelResult) -> float | None:
        """Served throughput over the machine's limit for the level's mode."""
        limit = self.machine_limit.get(level.mode, {}).get("limit")
        return level.served.throughput / limit if limit else None

    def level(self, mode: str, concurrency: int) -> LevelResult | None:
        return next((lv for lv in self.levels if lv.mode == mode and lv.concurrency == concurrency), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "machine": self.machine,
            "config": self.config,
            "settings": self.settings,
            "levels": [lv.as_dict() for lv in self.levels],
            "speedups": self.speedups,
            "unit_costs_s_per_image": {str(k): v for k, v in self.unit_costs.items()},
            "machine_limit": self.machine_limit,
            "served_over_machine_limit": [
                {"mode": lv.mode, "concurrency": lv.concurrency, "ratio": self.limit_ratio(lv)} for lv in self.levels if self.limit_ratio(lv) is not None
            ],
            "head_of_line": self.head_of_line,
        }


def measure_level(
    server: Any,
    stats_client: Any,
    deployment: Deployment,
    mode: Mode,
    input_data: Path,
    concurrency: int,
    requests: int,
    csv_path: Path,
    protocol: str,
) -> LevelResult:
    """One perf_analyzer run, with Triton's per-model statistics and the BLS stage timers around it.

    ``server`` has ``grpc_url``, ``http_url``, ``metrics_url`` and ``pid`` (the tritonserver process,
    whose tree's CPU time is measured): a ``ServerProcess``, or the tests' ``TritonServer``.
    """
    url = server.grpc_url if protocol == "grpc" else server.http_url
    stats_before, stages_before = snapshot(stats_client), stage_seconds(server.metrics_url)
    cpu_before = tree_cpu_seconds(server.pid)
    perf = run_perf_analyzer(url, input_data, concurrency, requests, csv_path, protocol=protocol)
    cpu = tree_cpu_seconds(server.pid) - cpu_before
    stats = delta(snapshot(stats_client), stats_before)
    stages = stage_delta(stage_seconds(server.metrics_url), stages_before)
    images, student_rows, teacher_rows = unet_rows(stats)
    settings = mode.settings(deployment.defaults)
    mean_steps, share = steps_from_unet_rows(deployment, settings, images, student_rows, teacher_rows)
    return LevelResult(
        mode=mode.name,
        concurrency=concurrency,
        served=perf,
        breakdown=breakdown(stats),
        served_stage_ms={s: v / max(images, 1) * 1000 for s, v in stages.items()},
        served_mean_steps=mean_steps,
        served_teacher_share=share,
        served_cpu_ms=cpu / max(images, 1) * 1000,
    )


def _speedups(report: PresetReport, deployment: Deployment, modes: list[Mode]) -> list[dict[str, Any]]:
    rows = []
    defaults = deployment.defaults
    for c in sorted({lv.concurrency for lv in report.levels}):
        base = report.level(BASELINE, c)
        if base is None:
            continue
        costs = report.unit_costs.get(c)
        for mode in modes:
            lv = report.level(mode.name, c)
            if lv is None or mode.name == BASELINE:
                continue
            measured = lv.served.throughput / base.served.throughput
            predicted = predicted_speedup_from_steps(base.served_mean_steps, lv.served_mean_steps)
            row: dict[str, Any] = {
                "mode": mode.name,
                "concurrency": c,
                "teacher_share": lv.served_teacher_share,
                "mean_unet_steps": lv.served_mean_steps,
                "measured_speedup": measured,
                "predicted_from_steps": predicted,
                "measured_over_predicted": measured / predicted,
                # CPU time per image barely moves with the neighbours' load, unlike wall-clock throughput.
                "cpu_speedup": base.served_cpu_ms / lv.served_cpu_ms,
                "cpu_over_predicted": base.served_cpu_ms / lv.served_cpu_ms / predicted,
            }
            if lv.inprocess and base.inprocess:
                row["inprocess_speedup"] = lv.inprocess.throughput / base.inprocess.throughput
            if costs:
                unit = UnitCosts(**costs)
                s = mode.settings(defaults)
                mode_cost = unit.image_cost(s.student_steps, s.teacher_steps, lv.served_teacher_share, mode.strategy.uses_student)
                base_cost = unit.image_cost(0, defaults.teacher_steps, 1.0, uses_student=False)
                row["predicted_from_cost_model"] = base_cost / mode_cost
                row["measured_over_cost_model"] = measured / row["predicted_from_cost_model"]
            rows.append(row)
    return rows


def _unit_costs(report: PresetReport, deployment: Deployment) -> dict[int, dict[str, float]]:
    out = {}
    s = deployment.defaults
    for c in sorted({lv.concurrency for lv in report.levels}):
        student, teacher = report.level("student_only", c), report.level(BASELINE, c)
        if student and teacher and student.inprocess and teacher.inprocess:
            unit = UnitCosts.from_stages(
                student.inprocess.stage_seconds, teacher.inprocess.stage_seconds, student.inprocess.rows, s.student_steps, s.teacher_steps
            )
            out[c] = unit.as_dict()
    return out


def run_preset(config: SweepConfig, out_dir: Path, log: Log = print) -> PresetReport:
    import tritonclient.grpc as grpcclient

    from clients.client import AdaptiveClient
    from clients.server_process import ServerProcess
    from export.build import repository_or_preset

    out_dir.mkdir(parents=True, exist_ok=True)
    repository, _ = repository_or_preset(config.repository, config.preset)
    deployment = Deployment.load(assets_dir(repository))
    workload = Workload.from_file(config.prompts, config.entries)
    report = PresetReport(config.preset, machine_info(), config.as_dict(), deployment.defaults.as_dict())
    log(f"[{config.preset}] repository {repository}; defaults {deployment.defaults.as_dict()}")
    pipe = inprocess_pipeline(repository)
    # ONNX Runtime plans memory per input shape on first sight: meet each measured batch size once.
    # Only the in-process levels run here; a batch of 8 would grow this process's arenas by GBs on
    # `small` (the 32x32 attention maps) for nothing.
    inprocess_batches = sorted({min(c, deployment.max_rows) for c in config.inprocess_concurrency if c in config.concurrency})
    for batch in inprocess_batches:
        warm_up(pipe, workload, batch)
    # The server meets the same batch sizes. Not a request of max(concurrency) rows: the workload
    # sends single-row requests, and one 8-row request (16 UNet rows with CFG) would grow every UNet
    # instance's arena to ~3 GB on `small` for shapes the sweep never sends.
    served_batches = inprocess_batches
    with ServerProcess(repository, log=out_dir / "server.log") as server:
        stats_client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            with AdaptiveClient(server.grpc_url, "grpc") as client:
                for batch in served_batches:
                    prompts, seeds = workload.rows(0, batch)
                    client.generate(prompts, seeds, strategy="refine", tau=1e6)  # every component, rows as one batch
            for mode in config.modes:
                input_data = write_input_data(out_dir / "inputs" / f"{mode.name}.json", workload, mode)
                for c in config.levels(mode):
                    requests = config.requests(c)
                    level = measure_level(
                        server, stats_client, deployment, mode, input_data, c, requests, out_dir / "perf" / f"{mode.name}_c{c}.csv", config.protocol
                    )
                    if c in config.inprocess_concurrency:
                        level.inprocess = run_inprocess(pipe, mode, workload, batch=min(c, deployment.max_rows), rows=requests)
                    report.levels.append(level)
                    ip = level.inprocess
                    log(
                        f"[{config.preset}] {mode.name:<15} c={c}: served {level.served.throughput:6.2f} img/s "
                        f"p50 {level.served.p50_ms:7.0f} ms p99 {level.served.p99_ms:7.0f} ms, batch {level.breakdown.mean_bls_batch:.1f}, "
                        f"steps {level.served_mean_steps:5.2f}, teacher {level.served_teacher_share:4.0%}"
                        + (f" | in-process {ip.throughput:6.2f} img/s, ratio {level.ratio:.3f} (CPU {level.cpu_ratio:.3f})" if ip else "")
                    )
            if config.head_of_line_concurrency:
                from benchmarks.head_of_line import measure as head_of_line

                report.head_of_line = head_of_line(server.grpc_url, repository, config.head_of_line_concurrency, config.head_of_line_rows, log=lambda line: log(f"[{config.preset}]{line}"))
        finally:
            stats_client.close()
    if config.limit_rows:
        # After the server is gone: the limit must have the machine to itself.
        from benchmarks.machine_limit import machine_limit

        del pipe
        report.machine_limit = machine_limit(repository, config.modes, config.limit_rows, log=lambda line: log(f"[{config.preset}]{line}"))
    report.unit_costs = _unit_costs(report, deployment)
    report.speedups = _speedups(report, deployment, config.modes)
    return report
