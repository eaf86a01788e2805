"""Results on disk (JSON + CSV) and the summary tables printed after a run."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from benchmarks.machine import describe
from benchmarks.sweep import PresetReport
from benchmarks.triton_stats import COMPONENTS


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def level_rows(report: PresetReport) -> list[dict[str, Any]]:
    rows = []
    for lv in report.levels:
        ip = lv.inprocess
        rows.append(
            {
                "preset": report.preset,
                "mode": lv.mode,
                "concurrency": lv.concurrency,
                "requests": lv.served.requests,
                "served_img_per_s": round(lv.served.throughput, 4),
                "p50_ms": round(lv.served.p50_ms, 1),
                "p99_ms": round(lv.served.p99_ms, 1),
                "mean_bls_batch": round(lv.breakdown.mean_bls_batch, 2),
                "mean_unet_steps": round(lv.served_mean_steps, 3),
                "teacher_share": round(lv.served_teacher_share, 4),
                "inprocess_img_per_s": round(ip.throughput, 4) if ip else "",
                "inprocess_teacher_share": round(ip.teacher_share, 4) if ip else "",
                "served_over_inprocess": round(lv.ratio, 4) if ip else "",
                "served_cpu_ms_per_image": round(lv.served_cpu_ms, 2),
                "inprocess_cpu_ms_per_image": round(ip.cpu_ms_per_image, 2) if ip else "",
                "cpu_inprocess_over_served": round(lv.cpu_ratio, 4) if ip else "",
            }
        )
    return rows


def component_rows(report: PresetReport) -> list[dict[str, Any]]:
    rows = []
    for lv in report.levels:
        b = lv.breakdown
        base = {"preset": report.preset, "mode": lv.mode, "concurrency": lv.concurrency}
        rows.append({**base, "model": "adaptive_diffusion (BLS)", "queue_ms_per_image": round(b.bls_queue_ms, 3), "compute_ms_per_image": round(b.bls_compute_ms, 3), "calls_per_image": 1 / max(b.mean_bls_batch, 1e-9)})
        for name in COMPONENTS:
            c = b.components[name]
            rows.append({**base, "model": name, "queue_ms_per_image": round(c["queue_ms"], 3), "compute_ms_per_image": round(c["compute_ms"], 3), "calls_per_image": round(c["calls"], 3)})
        rows.append({**base, "model": "BLS overhead (BLS compute - component requests)", "queue_ms_per_image": "", "compute_ms_per_image": round(b.bls_overhead_ms, 3), "calls_per_image": round(b.component_calls_per_image, 3)})
    return rows


def stage_rows(report: PresetReport) -> list[dict[str, Any]]:
    rows = []
    for lv in report.levels:
        ip = lv.inprocess
        for stage, ms in lv.served_stage_ms.items():
            if ms == 0 and not (ip and ip.stage_seconds.get(stage)):
                continue
            rows.append(
                {
                    "preset": report.preset,
                    "mode": lv.mode,
                    "concurrency": lv.concurrency,
                    "stage": stage,
                    "served_ms_per_image": round(ms, 3),
                    "inprocess_ms_per_image": round(ip.stage_seconds.get(stage, 0.0) / ip.rows * 1000, 3) if ip else "",
                }
            )
    return rows


def limit_rows(report: PresetReport) -> list[dict[str, Any]]:
    """Served throughput against the machine's limit and against one in-process pipeline, per level."""
    rows = []
    for lv in report.levels:
        limit = report.machine_limit.get(lv.mode)
        fill = lv.breakdown.fill
        rows.append(
            {
                "preset": report.preset,
                "mode": lv.mode,
                "concurrency": lv.concurrency,
                "served_img_per_s": round(lv.served.throughput, 4),
                "machine_limit_img_per_s": round(limit["limit"], 4) if limit else "",
                "limit_shape": f"{limit['best']['workers']} x batch {limit['best']['batch']}" if limit else "",
                "served_over_limit": round(report.limit_ratio(lv), 4) if limit else "",
                "served_over_single_pipeline": round(lv.ratio, 4) if lv.inprocess else "",
                **{f"{m}_rows_per_execution": round(fill[m]["rows_per_execution"], 2) for m in ("unet_student", "unet_teacher") if m in fill},
                **{f"{m}_calls_per_execution": round(fill[m]["calls_per_execution"], 2) for m in ("unet_student", "unet_teacher") if m in fill},
            }
        )
    return rows


def save(report: PresetReport, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(report.as_dict(), indent=2))
    return [
        out_dir / "sweep.json",
        write_csv(out_dir / "sweep.csv", level_rows(report)),
        write_csv(out_dir / "components.csv", component_rows(report)),
        write_csv(out_dir / "stages.csv", stage_rows(report)),
        write_csv(out_dir / "speedup.csv", report.speedups),
        write_csv(out_dir / "headline.csv", headline(report)),
        write_csv(out_dir / "limit.csv", limit_rows(report)),
    ]


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in header]] + [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _geomean(values: Sequence[float]) -> float:
    import math

    return math.exp(sum(math.log(v) for v in values) / len(values))


def headline(report: PresetReport) -> list[dict[str, Any]]:
    """Served / in-process ratios per concurrency level, over all modes (geometric mean, min, max)."""
    rows = []
    for c in sorted({lv.concurrency for lv in report.levels if lv.inprocess}):
        levels = [lv for lv in report.levels if lv.concurrency == c and lv.inprocess]
        ratios = [lv.ratio for lv in levels]
        cpu = [lv.cpu_ratio for lv in levels]
        rows.append({"concurrency": c, "modes": len(levels), "throughput_ratio_geomean": _geomean(ratios), "min": min(ratios), "max": max(ratios), "cpu_ratio_geomean": _geomean(cpu)})
    return rows


def summary(report: PresetReport) -> str:
    out = [f"== {report.preset}: {describe(report.machine)}", f"settings: {report.settings}", ""]
    heads = headline(report)
    if heads:
        out.append("served / in-process throughput over all modes (wall clock; CPU = in-process / served CPU time per image):")
        out.append(_table(["c", "modes", "geomean", "min", "max", "CPU geomean"], [(h["concurrency"], h["modes"], h["throughput_ratio_geomean"], h["min"], h["max"], h["cpu_ratio_geomean"]) for h in heads]))
        out.append("")
    out.append(
        _table(
            ["mode", "c", "img/s", "p50 ms", "p99 ms", "batch", "steps", "teacher", "in-proc img/s", "served/in-proc", "CPU ratio"],
            [
                (
                    lv.mode, lv.concurrency, lv.served.throughput, round(lv.served.p50_ms), round(lv.served.p99_ms),
                    round(lv.breakdown.mean_bls_batch, 2), round(lv.served_mean_steps, 2), f"{lv.served_teacher_share:.0%}",
                    lv.inprocess.throughput if lv.inprocess else "", lv.ratio if lv.inprocess else "",
                    lv.cpu_ratio if lv.inprocess else "",
                )
                for lv in report.levels
            ],
        )
    )  # fmt: skip
    if report.speedups:
        out += ["", "adaptive speedup over teacher_only (served throughput ratio) vs predicted:"]
        out.append(
            _table(
                ["mode", "c", "teacher", "steps", "measured", "pred. steps", "meas/pred", "CPU speedup", "CPU/pred", "pred. cost model", "meas/cost"],
                [
                    (
                        r["mode"], r["concurrency"], f"{r['teacher_share']:.0%}", round(r["mean_unet_steps"], 2), r["measured_speedup"],
                        r["predicted_from_steps"], r["measured_over_predicted"], r["cpu_speedup"], r["cpu_over_predicted"],
                        r.get("predicted_from_cost_model", ""), r.get("measured_over_cost_model", ""),
                    )
                    for r in report.speedups
                ],
            )
        )  # fmt: skip
    if report.machine_limit:
        out += ["", "served / machine limit (the best of the served graphs with no server: one single-threaded pipeline per core, or one batched pipeline)"]
        out.append("and UNet batch fill (rows per execution; calls per execution > 1: an execution held rows of several requests):")
        out.append(
            _table(
                ["mode", "c", "img/s", "limit", "limit shape", "served/limit", "served/1 pipeline", "S rows/exec", "S calls/exec", "T rows/exec", "T calls/exec"],
                [
                    (
                        r["mode"], r["concurrency"], r["served_img_per_s"], r["machine_limit_img_per_s"], r["limit_shape"], r["served_over_limit"],
                        r["served_over_single_pipeline"], r.get("unet_student_rows_per_execution", ""), r.get("unet_student_calls_per_execution", ""),
                        r.get("unet_teacher_rows_per_execution", ""), r.get("unet_teacher_calls_per_execution", ""),
                    )
                    for r in limit_rows(report)
                ],
            )
        )  # fmt: skip
    if report.head_of_line:
        h = report.head_of_line
        out += [
            "",
            f"head-of-line (c={h['concurrency']}, {h['rows']} requests, refine with tau at the median: {h['accepted']} accepted, {h['refined']} refined): "
            f"accepted requests p50 {h['mixed_accepted_p50_ms']:.0f} ms (p99 {h['mixed_accepted_p99_ms']:.0f}) vs the same requests student-only "
            f"p50 {h['student_only_same_requests_p50_ms']:.0f} ms (p99 {h['student_only_same_requests_p99_ms']:.0f}): ratio {h['p50_ratio']:.2f}",
        ]
    out += ["", "where a served image's time goes (ms per image, Triton statistics; in-process = same engines, no server):"]
    rows = []
    for lv in report.levels:
        if lv.concurrency not in (1, 4):
            continue
        b = lv.breakdown
        comp = {n: b.components[n]["compute_ms"] for n in COMPONENTS}
        rows.append(
            (
                lv.mode, lv.concurrency, round(lv.served.avg_ms), round(b.bls_queue_ms, 1), round(b.bls_compute_ms, 1),
                *(round(comp[n], 1) for n in COMPONENTS), round(sum(b.components[n]["queue_ms"] for n in COMPONENTS), 2),
                round(b.bls_overhead_ms, 1), round(b.bls_overhead_per_call_ms, 2), round(1000 / lv.inprocess.throughput, 1) if lv.inprocess else "",
            )
        )  # fmt: skip
    out.append(
        _table(
            ["mode", "c", "latency", "BLS queue", "BLS compute", "text", "unet_S", "unet_T", "decode", "reward", "comp. queue", "BLS ovh", "ovh/call", "in-proc/img"],
            rows,
        )
    )
    return "\n".join(out)
