"""perf_analyzer runs against ``adaptive_diffusion``: its CSV report and its per-request export.

Each run sends a fixed number of requests (``--request-count``) instead of waiting for perf_analyzer's
stability check: on a shared machine three windows within 10% may never come, and a fixed count that
is a multiple of the input entries keeps the mix of prompts (so the teacher share) exact.

Throughput comes from the per-request timestamps of ``--profile-export-file``: in request-count mode
perf_analyzer's own "Inferences/Second" divides by at least one second (4 requests of 100 ms read
4.0/s). The same export carries each response's ``route`` and ``unet_steps``.
"""

from __future__ import annotations

import collections
import csv
import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.client import MODEL


@dataclass
class PerfResult:
    concurrency: int
    requests: int
    throughput: float  # images per second (one row per request)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    avg_ms: float
    server_queue_ms: float
    server_compute_ms: float  # compute input + infer + output of the BLS, per request
    client_overhead_ms: float  # client send/recv + network and server send/recv, per request
    reported_throughput: float = float("nan")  # perf_analyzer's own figure (see module docstring)
    routes: dict[str, int] = field(default_factory=dict)  # from the responses
    mean_unet_steps: float = float("nan")  # from the responses

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PerfAnalyzerError(RuntimeError):
    pass


def perf_analyzer_args(
    url: str,
    input_data: Path,
    concurrency: int,
    requests: int,
    csv_path: Path,
    *,
    protocol: str = "grpc",
    model: str = MODEL,
) -> list[str]:
    return [
        "-m", model,
        "-u", url,
        "-i", protocol,
        "--input-data", str(input_data),
        "--concurrency-range", str(concurrency),
        "--request-count", str(requests),
        "-f", str(csv_path),
        "--verbose-csv",  # adds the average latency column
    ]  # fmt: skip


def run_perf_analyzer(
    url: str,
    input_data: Path,
    concurrency: int,
    requests: int,
    csv_path: Path,
    *,
    protocol: str = "grpc",
    timeout_s: float = 900.0,
) -> PerfResult:
    from benchmarks.perf_analyzer import perf_analyzer_command, perf_analyzer_env

    csv_path.parent.mkdir(parents=True, exist_ok=True)
    # The export holds every image as JSON (about 1 MB a request on `small`): read, then dropped.
    with tempfile.TemporaryDirectory(prefix="perf_export_") as tmp:
        export = Path(tmp) / "export.json"
        command = perf_analyzer_command() + perf_analyzer_args(url, input_data, concurrency, requests, csv_path, protocol=protocol)
        command += ["--profile-export-file", str(export)]
        proc = subprocess.run(command, env=perf_analyzer_env(), capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not csv_path.is_file() or not export.is_file():
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise PerfAnalyzerError(f"perf_analyzer exited with {proc.returncode}: {' '.join(command)}\n{tail}")
        (result,) = parse_perf_csv(csv_path, requests=requests)
        return apply_profile_export(result, json.loads(export.read_text()))


def apply_profile_export(result: PerfResult, export: dict[str, Any]) -> PerfResult:
    """Throughput, latency percentiles, routes and UNet steps from perf_analyzer's per-request export."""
    requests = [r for exp in export["experiments"] for r in exp["requests"] if r.get("response_timestamps")]
    if not requests:
        raise PerfAnalyzerError("the profile export has no answered requests")
    sent = np.array([r["timestamp"] for r in requests], dtype=np.float64)
    done = np.array([r["response_timestamps"][-1] for r in requests], dtype=np.float64)
    latency_ms = (done - sent) / 1e6
    result.reported_throughput = result.throughput
    result.requests = len(requests)
    result.throughput = len(requests) / ((done.max() - sent.min()) / 1e9)
    result.p50_ms, result.p90_ms, result.p99_ms = (float(np.percentile(latency_ms, q)) for q in (50, 90, 99))
    result.avg_ms = float(latency_ms.mean())
    outputs = [o for r in requests for o in r.get("response_outputs", [])]
    routes = [o["route"] for o in outputs if "route" in o]
    steps = [o["unet_steps"] for o in outputs if "unet_steps" in o]
    result.routes = dict(collections.Counter(routes))
    result.mean_unet_steps = float(np.mean(steps)) if steps else float("nan")
    return result


def _us_to_ms(row: dict[str, str], *keys: str) -> float:
    if any(not row.get(k) for k in keys):
        return float("nan")  # a column only the verbose CSV has
    return sum(float(row[k]) for k in keys) / 1000.0


def parse_perf_csv(path: Path, *, requests: int = 0) -> list[PerfResult]:
    """One PerfResult per concurrency row of perf_analyzer's ``-f`` CSV (latencies are in us)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("Concurrency")]
    results = []
    for row in rows:
        results.append(
            PerfResult(
                concurrency=int(row["Concurrency"]),
                requests=requests,
                throughput=float(row["Inferences/Second"]),
                p50_ms=_us_to_ms(row, "p50 latency"),
                p90_ms=_us_to_ms(row, "p90 latency"),
                p99_ms=_us_to_ms(row, "p99 latency"),
                avg_ms=_us_to_ms(row, "Avg latency"),
                server_queue_ms=_us_to_ms(row, "Server Queue"),
                server_compute_ms=_us_to_ms(row, "Server Compute Input", "Server Compute Infer", "Server Compute Output"),
                client_overhead_ms=_us_to_ms(row, "Client Send", "Network+Server Send/Recv", "Client Recv"),
            )
        )
    if not results:
        raise PerfAnalyzerError(f"{path}: no result rows")
    return results
