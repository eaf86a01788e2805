"""Kill one server of a fleet mid-run and measure what the clients behind the balancer see.

    python -m benchmarks.failover --servers 2 --concurrency 4 --requests 48 --kill-after 12 --restart

``concurrency`` clients send ``requests`` requests in all through HAProxy (gRPC or HTTP); once
``kill_after`` have been answered, one tritonserver gets SIGKILL. Reported: failed requests (and
their errors), how long the balancer took to mark the server DOWN, the window in which clients saw
errors, images/s and latency before and after the kill, and with ``--restart`` how long a restarted
server took to be back in rotation. Results go to ``benchmarks/results/failover/`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks.fleet import FleetPlacement, LocalFleet, fleet_repository
from benchmarks.workload import TEST_PROMPTS, Workload
from clients.client import AdaptiveClient

RESULTS = Path(__file__).resolve().parent / "results" / "failover"


@dataclass(frozen=True)
class Outcome:
    start: float  # monotonic seconds
    end: float
    ok: bool
    error: str = ""


@dataclass
class FailoverResult:
    servers: int
    protocol: str
    concurrency: int
    requests: int
    failed: int
    failed_after_down: int  # failed requests sent after the balancer had marked the server DOWN
    errors: list[str]
    detected_s: float  # kill -> the balancer marks the server DOWN in both backends
    error_window_s: float  # kill -> the end of the last failed request (0 when none failed)
    before: dict[str, float]  # images/s, p50/p99 latency of the requests answered before the kill
    after: dict[str, float]  # ... of the requests started after the balancer marked it DOWN
    rejoin_s: float | None = None  # restart of the killed server -> UP again in the balancer
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _window(outcomes: Sequence[Outcome]) -> dict[str, float]:
    ok = [o for o in outcomes if o.ok]
    if len(ok) < 2:
        return {"requests": float(len(ok)), "images_per_s": float("nan"), "p50_s": float("nan"), "p99_s": float("nan")}
    latency = np.array([o.end - o.start for o in ok])
    span = max(o.end for o in ok) - min(o.start for o in ok)
    return {
        "requests": float(len(ok)),
        "images_per_s": len(ok) / span,
        "p50_s": float(np.percentile(latency, 50)),
        "p99_s": float(np.percentile(latency, 99)),
    }


def send_load(
    url: str, protocol: str, workload: Workload, concurrency: int, requests: int, on_answer: Callable[[int], None] = lambda n: None
) -> list[Outcome]:
    """``requests`` one-row requests from ``concurrency`` threads; ``on_answer(n)`` after the n-th success."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    issued = [0]

    def client_loop() -> None:
        with AdaptiveClient(url, protocol=protocol) as client:
            while True:
                with lock:
                    if issued[0] >= requests:
                        return
                    i = issued[0]
                    issued[0] += 1
                prompts, seeds = workload.rows(i, 1)
                start = time.monotonic()
                try:
                    client.infer(prompts, seeds)
                    outcome = Outcome(start, time.monotonic(), True)
                except Exception as exc:  # what a client sees, whatever its type
                    outcome = Outcome(start, time.monotonic(), False, f"{type(exc).__name__}: {str(exc)[:200]}")
                with lock:
                    outcomes.append(outcome)
                    answered = sum(o.ok for o in outcomes)
                if outcome.ok:
                    on_answer(answered)

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(outcomes, key=lambda o: o.start)


def measure_failover(
    fleet: LocalFleet, *, protocol: str = "grpc", concurrency: int = 4, requests: int = 48, kill_after: int = 12, victim: int = 0, restart: bool = False
) -> FailoverResult:
    workload = Workload.from_file(TEST_PROMPTS, 8)
    kill_requested = threading.Event()
    marks: dict[str, float] = {}

    def on_answer(n: int) -> None:
        if n >= kill_after and not kill_requested.is_set():
            kill_requested.set()

    def killer() -> None:
        kill_requested.wait()
        marks["kill"] = fleet.kill(victim)
        marks["down"] = fleet.wait_state(fleet.upstreams[victim].name, "DOWN")

    k = threading.Thread(target=killer, daemon=True)
    k.start()
    outcomes = send_load(fleet.grpc_url if protocol == "grpc" else fleet.http_url, protocol, workload, concurrency, requests, on_answer)
    kill_requested.set()  # in case fewer than kill_after were answered
    k.join(timeout=180)
    if "down" not in marks:
        raise RuntimeError(f"the killed server was never marked DOWN; marks {marks}")
    failed = [o for o in outcomes if not o.ok]
    rejoin = None
    if restart:
        t0 = time.monotonic()
        fleet.restart(victim)
        rejoin = fleet.wait_state(fleet.upstreams[victim].name, "UP") - t0
    return FailoverResult(
        servers=len(fleet.servers),
        protocol=protocol,
        concurrency=concurrency,
        requests=len(outcomes),
        failed=len(failed),
        failed_after_down=sum(1 for o in failed if o.start >= marks["down"]),
        errors=sorted({o.error for o in failed}),
        detected_s=marks["down"] - marks["kill"],
        error_window_s=max((o.end - marks["kill"] for o in failed), default=0.0),
        before=_window([o for o in outcomes if o.end <= marks["kill"]]),
        after=_window([o for o in outcomes if o.start >= marks["down"]]),
        rejoin_s=rejoin,
        notes={"health": asdict(fleet.health), "in_flight_at_kill": sum(1 for o in outcomes if o.start < marks["kill"] < o.end)},
    )


def measure_failover_perf_analyzer(
    fleet: LocalFleet, workdir: Path, *, concurrency: int = 4, requests: int = 48, kill_after: int = 12, victim: int = 0
) -> dict[str, Any]:
    """The same kill, with perf_analyzer (gRPC, ``--request-count``) as the load through the balancer.

    The kill waits until the servers' own statistics count ``kill_after`` answered requests. Returned:
    perf_analyzer's exit status and what its per-request export shows (answered requests, throughput
    and p99 before and after the kill), and the balancer's detection time.
    """
    from benchmarks.perf_analyzer import perf_analyzer_command, perf_analyzer_env

    workload = Workload.from_file(TEST_PROMPTS, 8)
    data = workdir / "failover_input.json"
    data.write_text(json.dumps({"data": [{"prompt": [p], "seed": [s]} for p, s in zip(workload.prompts, workload.seeds)]}))
    export = workdir / "failover_export.json"
    command = perf_analyzer_command() + [
        "-m", "adaptive_diffusion", "-u", fleet.grpc_url, "-i", "grpc", "--input-data", str(data),
        "--concurrency-range", str(concurrency), "--request-count", str(requests), "--profile-export-file", str(export),
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=perf_analyzer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marks: dict[str, float] = {}
    while proc.poll() is None and fleet.answered() < kill_after:
        time.sleep(0.2)
    if proc.poll() is None:
        marks["kill_wall"] = time.time()
        marks["kill"] = fleet.kill(victim)
        marks["down"] = fleet.wait_state(fleet.upstreams[victim].name, "DOWN")
        marks["down_wall"] = marks["kill_wall"] + marks["down"] - marks["kill"]
    output, _ = proc.communicate(timeout=1800)
    result: dict[str, Any] = {"load": "perf_analyzer", "exit_status": proc.returncode, "requests": requests, "concurrency": concurrency,
                              "output_tail": output[-1500:], "killed": "kill" in marks}  # fmt: skip
    if "kill" in marks:
        result["detected_s"] = marks["down"] - marks["kill"]
    if export.is_file():
        reqs = [r for e in json.loads(export.read_text())["experiments"] for r in e["requests"]]
        answered = [r for r in reqs if r.get("response_timestamps")]
        result["answered"] = len(answered)
        outcomes = [Outcome(r["timestamp"] / 1e9, r["response_timestamps"][-1] / 1e9, True) for r in answered]
        if "kill_wall" in marks:
            result["before"] = _window([o for o in outcomes if o.end <= marks["kill_wall"]])
            result["after"] = _window([o for o in outcomes if o.start >= marks["down_wall"]])
        result["all"] = _window(outcomes)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.failover", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--bls-per-server", type=int, default=2, help="BLS instances of each server")
    p.add_argument("--load", choices=("clients", "perf_analyzer"), default="clients", help="tritonclient threads (each request's outcome) or perf_analyzer")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="clients load only (perf_analyzer uses gRPC)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--kill-after", type=int, default=12, help="answered requests before the kill")
    p.add_argument("--restart", action="store_true", help="restart the killed server and time its return to the rotation (clients load)")
    p.add_argument("--no-retry", action="store_true", help="the balancer does not re-send a request a killed server dropped")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    from export.build import ensure_repository

    source = ensure_repository(args.preset, progress=False)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="failover_"))
    repository = fleet_repository(source, work / "repository", FleetPlacement(cores=1, bls=args.bls_per_server))
    try:
        with LocalFleet(repository, args.servers, log_dir=work, retry_dropped=not args.no_retry) as fleet:
            if args.load == "perf_analyzer":
                result = measure_failover_perf_analyzer(fleet, work, concurrency=args.concurrency, requests=args.requests, kill_after=args.kill_after)
            else:
                result = measure_failover(
                    fleet, protocol=args.protocol, concurrency=args.concurrency, requests=args.requests, kill_after=args.kill_after, restart=args.restart
                ).as_dict()
    finally:
        shutil.rmtree(repository, ignore_errors=True)
    result.update({"servers": args.servers, "bls_per_server": args.bls_per_server, "retry_dropped": not args.no_retry, "preset": args.preset,
                   "command": "python -m benchmarks.failover " + " ".join(sys.argv[1:] if argv is None else argv)})  # fmt: skip
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = args.out / f"failover-{args.load}-{'noretry-' if args.no_retry else ''}{stamp}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"wrote {path} (server and haproxy logs in {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
