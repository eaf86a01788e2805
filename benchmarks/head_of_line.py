"""Head-of-line blocking: do the images the student answers come back at student speed under load?

A closed loop of ``c`` clients sends single-row requests over the same prompts twice:
- the mixed load: ``refine`` with a tau at the median student score of these prompts, so about half
  of the requests are refined by the teacher and half are answered by the student;
- the student-only load: the same requests with ``strategy=student_only``.
For the requests the gate accepted in the mixed load, the ratio of their p50 latency to the p50 of
the same requests in the student-only load tells whether accepted rows wait for their neighbours'
teacher work (a server that batches them together answers them only after the teacher tail).

    python -m benchmarks.head_of_line --preset small --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.workload import TEST_PROMPTS, Workload


@dataclass
class LoadResult:
    strategy: str
    concurrency: int
    latencies_s: list[float]  # per request, in workload order of the requests sent
    routes: list[str]
    indices: list[int]  # workload row of each request
    seconds: float

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.seconds


def closed_loop(url: str, workload: Workload, rows: int, concurrency: int, settings: dict[str, Any]) -> LoadResult:
    """``rows`` single-row requests (workload rows 0..rows-1, each once) from ``concurrency`` clients."""
    from clients.client import AdaptiveClient

    next_row = iter(range(rows))
    lock = threading.Lock()
    out: list[tuple[int, float, str]] = []
    errors: list[BaseException] = []

    def client() -> None:
        with AdaptiveClient(url, "grpc") as c:
            while True:
                with lock:
                    i = next(next_row, None)
                if i is None:
                    return
                prompts, seeds = workload.rows(i, 1)
                try:
                    g = c.generate(prompts, seeds, **settings)[0]
                except BaseException as e:  # reported after the run
                    errors.append(e)
                    return
                with lock:
                    out.append((i, g.latency_s, g.route))

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, first: {errors[0]}")
    out.sort()
    return LoadResult(settings["strategy"], concurrency, [o[1] for o in out], [o[2] for o in out], [o[0] for o in out], seconds)


def measure(url: str, repository: Path, concurrency: int, rows: int, log=print) -> dict[str, Any]:
    from bll_python.inprocess import inprocess_pipeline
    from bll_python.settings import GenerationSettings

    workload = Workload.from_file(TEST_PROMPTS, rows)
    pipe = inprocess_pipeline(repository)
    student = GenerationSettings.from_mapping({"strategy": "student_only"}, pipe.deployment.defaults)
    scores = np.concatenate([pipe(*workload.rows(i, 4), student).scores for i in range(0, rows, 4)])[:rows]
    order = np.sort(scores)
    tau = float((order[rows // 2 - 1] + order[rows // 2]) / 2)  # half the rows on each side
    closed_loop(url, workload, min(rows, 2 * concurrency), concurrency, {"strategy": "student_only"})  # warm-up
    mixed = closed_loop(url, workload, rows, concurrency, {"strategy": "refine", "tau": tau})
    alone = closed_loop(url, workload, rows, concurrency, {"strategy": "student_only"})
    accepted = [i for i, r in zip(mixed.indices, mixed.routes) if r == "student"]
    mixed_ms = np.array([lat for i, lat, r in zip(mixed.indices, mixed.latencies_s, mixed.routes) if r == "student"]) * 1000
    alone_ms = np.array([alone.latencies_s[alone.indices.index(i)] for i in accepted]) * 1000
    report = {
        "concurrency": concurrency,
        "rows": rows,
        "tau": tau,
        "accepted": len(accepted),
        "refined": rows - len(accepted),
        "mixed_accepted_p50_ms": float(np.percentile(mixed_ms, 50)),
        "mixed_accepted_p99_ms": float(np.percentile(mixed_ms, 99)),
        "student_only_same_requests_p50_ms": float(np.percentile(alone_ms, 50)),
        "student_only_same_requests_p99_ms": float(np.percentile(alone_ms, 99)),
        "mixed_throughput": mixed.throughput,
        "student_only_throughput": alone.throughput,
    }
    report["p50_ratio"] = report["mixed_accepted_p50_ms"] / report["student_only_same_requests_p50_ms"]
    log(
        f"  head-of-line c={concurrency}: accepted rows p50 {report['mixed_accepted_p50_ms']:.0f} ms in the mixed load vs "
        f"{report['student_only_same_requests_p50_ms']:.0f} ms student-only -> ratio {report['p50_ratio']:.2f} "
        f"({len(accepted)} accepted, {rows - len(accepted)} refined)"
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.head_of_line", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--repository", type=Path)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rows", type=int, default=32, help="requests per load (default 32)")
    p.add_argument("--out", type=Path, help="write the report as JSON here")
    args = p.parse_args(argv)
    from export.build import repository_or_preset
    from tests.triton_fixtures import running_server

    repository, label = repository_or_preset(args.repository, args.preset)
    with running_server(repository) as server:
        report = measure(server.grpc_url, repository, args.concurrency, args.rows)
    report["label"] = label
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
