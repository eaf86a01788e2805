"""The machine's limit: what the served graphs can do on this machine with no server at all.

One single-threaded in-process pipeline (the served ONNX graphs and session settings) per worker
process, all workers started together on disjoint rows of the same workload; throughput is all
rows over the slowest worker's time. Several shapes are tried (one worker per core at batch 1 and at
a larger batch, one worker with the whole batch) and the best one is the limit, so "served / limit"
compares the server with the best this machine was seen to do, not with one serial pipeline.

    python -m benchmarks.machine_limit --preset small --modes student_only teacher_only refine_k50
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from benchmarks.modes import Mode, select_modes
from benchmarks.workload import TEST_PROMPTS, Workload


@dataclass
class LimitRun:
    mode: str
    workers: int
    batch: int
    rows: int
    seconds: float
    throughput: float
    cpu_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _worker(repository: str, mode: Mode, workload: Workload, first: int, rows: int, batch: int, barrier: Any, out: Any) -> None:
    # One core per worker: the served components run one ONNX Runtime thread each, and torch's
    # scheduler math must not spread over the other worker's core either.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from benchmarks.inprocess import warm_up
    from bll_python.inprocess import inprocess_pipeline

    pipe = inprocess_pipeline(Path(repository))
    warm_up(pipe, workload, batch)
    settings = mode.settings(pipe.deployment.defaults)
    barrier.wait()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for start in range(first, first + rows, batch):
        prompts, seeds = workload.rows(start, min(batch, first + rows - start))
        pipe(prompts, seeds, settings)
    out.put((time.perf_counter() - t0, time.process_time() - cpu0))


def run_limit(repository: Path, mode: Mode, workload: Workload, rows: int, workers: int, batch: int) -> LimitRun:
    """``rows`` images split evenly over ``workers`` processes, each in pipeline batches of ``batch``."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    per = rows // workers
    procs = [ctx.Process(target=_worker, args=(str(repository), mode, workload, i * per, per, batch, barrier, out)) for i in range(workers)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"machine-limit worker exited with status {p.exitcode}")
    seconds = max(r[0] for r in results)
    return LimitRun(mode.name, workers, batch, per * workers, seconds, per * workers / seconds, sum(r[1] for r in results))


def shapes(cores: int, max_rows: int) -> list[tuple[int, int]]:
    """(workers, batch) pairs tried: a worker per core at batch 1 and 4, one worker at the full batch."""
    return sorted({(cores, 1), (cores, min(4, max_rows)), (1, max_rows)})


def machine_limit(repository: Path, modes: Sequence[Mode], rows: int, cores: int | None = None, log=print) -> dict[str, dict[str, Any]]:
    """Per mode, every shape's run and the best throughput (the limit)."""
    from bll_python.deployment import Deployment
    from bll_python.layout import assets_dir

    cores = cores or len(os.sched_getaffinity(0))
    max_rows = Deployment.load(assets_dir(repository)).max_rows
    workload = Workload.from_file(TEST_PROMPTS, 16)
    report: dict[str, dict[str, Any]] = {}
    for mode in modes:
        runs = []
        for workers, batch in shapes(cores, max_rows):
            n = max(rows, workers * batch)
            n -= n % (workers * batch)  # whole batches in every worker
            run = run_limit(repository, mode, workload, n, workers, batch)
            log(f"  machine limit {mode.name:<15} {workers} worker(s) x batch {batch}: {run.throughput:6.2f} img/s ({run.rows} images, {run.seconds:.1f} s)")
            runs.append(run)
        best = max(runs, key=lambda r: r.throughput)
        report[mode.name] = {"limit": best.throughput, "best": best.as_dict(), "runs": [r.as_dict() for r in runs]}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.machine_limit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--repository", type=Path)
    p.add_argument("--modes", nargs="+", default=["student_only", "teacher_only", "refine_k50"])
    p.add_argument("--rows", type=int, default=16, help="images per shape and mode (default 16)")
    args = p.parse_args(argv)
    from export.build import repository_or_preset

    repository, label = repository_or_preset(args.repository, args.preset)
    print(f"[{label}] machine limit on {len(os.sched_getaffinity(0))} cores")
    report = machine_limit(repository, select_modes(args.modes), args.rows)
    for name, r in report.items():
        b = r["best"]
        print(f"[{label}] {name:<15} limit {r['limit']:6.2f} img/s ({b['workers']} worker(s) x batch {b['batch']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
