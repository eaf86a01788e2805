"""PNG figures of a sweep (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.figures import save_figure  # noqa: E402
from benchmarks.sweep import PresetReport  # noqa: E402
from benchmarks.triton_stats import COMPONENTS  # noqa: E402


def _modes(report: PresetReport) -> list[str]:
    return list(dict.fromkeys(lv.mode for lv in report.levels))


def throughput_plot(report: PresetReport, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in _modes(report):
        levels = [lv for lv in report.levels if lv.mode == mode]
        line = ax.plot([lv.concurrency for lv in levels], [lv.served.throughput for lv in levels], marker="o", label=mode)[0]
        ip = [lv for lv in levels if lv.inprocess]
        if ip:
            ax.plot([lv.concurrency for lv in ip], [lv.inprocess.throughput for lv in ip], ls="--", marker="x", color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (perf_analyzer)")
    ax.set_ylabel("images / s")
    ax.set_title(f"{report.preset}: served (solid) and in-process limit (dashed, x)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def latency_plot(report: PresetReport, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in _modes(report):
        levels = [lv for lv in report.levels if lv.mode == mode]
        line = ax.plot([lv.concurrency for lv in levels], [lv.served.p50_ms for lv in levels], marker="o", label=f"{mode} p50")[0]
        ax.plot([lv.concurrency for lv in levels], [lv.served.p99_ms for lv in levels], ls=":", color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("latency, ms (p50 solid, p99 dotted)")
    ax.set_title(f"{report.preset}: request latency")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def ratio_plot(report: PresetReport, path: Path) -> Path:
    levels = [lv for lv in report.levels if lv.inprocess]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(levels)), 4))
    ax.bar(range(len(levels)), [lv.ratio for lv in levels], color=["C0" if lv.concurrency == 1 else "C1" for lv in levels])
    ax.set_xticks(range(len(levels)), [f"{lv.mode}\nc={lv.concurrency}" for lv in levels], rotation=90, fontsize=7)
    for target, c in ((0.90, "C0"), (0.95, "C1")):
        ax.axhline(target, color=c, ls="--", lw=1)
    ax.set_ylabel("served / in-process throughput")
    ax.set_title(f"{report.preset}: serving efficiency (targets 0.90 at c=1, 0.95 at c=4)")
    return save_figure(fig, path)


def speedup_plot(report: PresetReport, path: Path) -> Path:
    rows = report.speedups
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows)), 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["measured_speedup"] for r in rows], width=0.4, label="measured (served)")
    ax.bar([i + 0.2 for i in x], [r["predicted_from_steps"] for r in rows], width=0.4, label="predicted from UNet steps")
    ax.set_xticks(list(x), [f"{r['mode']}\nc={r['concurrency']}" for r in rows], rotation=90, fontsize=7)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("throughput / teacher_only")
    ax.set_title(f"{report.preset}: adaptive speedup over teacher-only")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def component_plot(report: PresetReport, path: Path) -> Path:
    """Stacked per-image time by model at concurrency 1 (or the lowest measured)."""
    c = min(lv.concurrency for lv in report.levels)
    levels = [lv for lv in report.levels if lv.concurrency == c]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(levels)), 4.5))
    bottom = [0.0] * len(levels)
    parts = [(n, lambda lv, n=n: lv.breakdown.components[n]["compute_ms"]) for n in COMPONENTS]
    parts += [
        ("component queues", lambda lv: sum(lv.breakdown.components[n]["queue_ms"] for n in COMPONENTS)),
        ("BLS overhead", lambda lv: lv.breakdown.bls_overhead_ms),
        ("BLS queue", lambda lv: lv.breakdown.bls_queue_ms),
    ]
    for name, value in parts:
        heights = [max(value(lv), 0.0) for lv in levels]
        ax.bar(range(len(levels)), heights, bottom=bottom, label=name)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ip = [(i, 1000 / lv.inprocess.throughput) for i, lv in enumerate(levels) if lv.inprocess]
    if ip:
        ax.scatter([i for i, _ in ip], [v for _, v in ip], marker="_", s=400, color="k", zorder=3, label="in-process ms/image")
    ax.set_xticks(range(len(levels)), [lv.mode for lv in levels], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("ms per image")
    ax.set_title(f"{report.preset}: where a served image's time goes (c={c}, Triton statistics)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_all(report: PresetReport, out_dir: Path) -> list[Path]:
    paths = [throughput_plot(report, out_dir / "throughput.png"), latency_plot(report, out_dir / "latency.png"), component_plot(report, out_dir / "components.png")]
    if any(lv.inprocess for lv in report.levels):
        paths.append(ratio_plot(report, out_dir / "served_vs_inprocess.png"))
    if report.speedups:
        paths.append(speedup_plot(report, out_dir / "speedup.png"))
    return paths
