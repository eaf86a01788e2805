"""Replicas for a target: images/s and p99 latency at an expected accept rate, from measured per-GPU figures.

    python -m benchmarks.sizing --sweep benchmarks/results/tiny/sweep.csv --images-per-s 20 --p99-s 2 --accept-rate 0.5
    python -m benchmarks.sizing --sweep my-h100/sweep.csv --images-per-s 50 --p99-s 3 --accept-rate 0.3 0.5 0.7 --spare 1

Input: one server's (one GPU's) measured ``student_only`` and ``teacher_only`` throughput and p99 at
each concurrency, as ``make bench`` (``benchmarks.run``) writes them to ``sweep.csv``.

The model, per concurrency level n (both modes measured at n):

- cost of an image at accept rate a: ``1/X_student(n) + (1 - a) / X_teacher(n)`` GPU-seconds: every
  image pays the student pass and the gate, a rejected one also a teacher image (an upper bound for
  ``refine``, which runs the last ``teacher_steps`` from the student's latent and reuses its text
  embeddings), so one server gives ``X(a, n)`` images/s;
- p99 at n: ``p99_student(n)`` if fewer than 1 % of the images go to the teacher, else
  ``p99_student(n) + p99_teacher(n)`` (the slowest percent are rejected images, which pay both passes);
- a server is run at the level with the most throughput whose p99 meets the target: replicas =
  ``ceil(target / X(a, n*))``, plus ``--spare`` servers so that losing one (a node, a rollout) still
  meets it. The balancer keeps every server at that level only while it spreads the load evenly
  (``leastconn``); the HPA's queue signal (export/deploy) adds servers when it does not.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

STUDENT, TEACHER = "student_only", "teacher_only"


@dataclass(frozen=True)
class Level:
    """One server at one concurrency: images/s and p99 seconds, student only and teacher only."""

    concurrency: int
    student_images_per_s: float
    student_p99_s: float
    teacher_images_per_s: float
    teacher_p99_s: float

    def images_per_s(self, accept_rate: float) -> float:
        return 1.0 / (1.0 / self.student_images_per_s + (1.0 - accept_rate) / self.teacher_images_per_s)

    def p99_s(self, accept_rate: float) -> float:
        return self.student_p99_s + (self.teacher_p99_s if 1.0 - accept_rate >= 0.01 else 0.0)


@dataclass(frozen=True)
class Sizing:
    accept_rate: float
    concurrency: int | None  # per server; None when no measured level meets the p99 target
    per_server_images_per_s: float
    p99_s: float
    replicas: int | None

    def as_row(self) -> dict[str, object]:
        return asdict(self)


def read_sweep(path: Path) -> list[Level]:
    """The levels of a ``sweep.csv`` at which both student_only and teacher_only were measured."""
    by_mode: dict[str, dict[int, tuple[float, float]]] = {STUDENT: {}, TEACHER: {}}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["mode"] in by_mode and row.get("served_img_per_s"):
                by_mode[row["mode"]][int(row["concurrency"])] = (float(row["served_img_per_s"]), float(row["p99_ms"]) / 1000.0)
    levels = []
    for n in sorted(set(by_mode[STUDENT]) & set(by_mode[TEACHER])):
        (xs, ps), (xt, pt) = by_mode[STUDENT][n], by_mode[TEACHER][n]
        levels.append(Level(n, xs, ps, xt, pt))
    if not levels:
        raise ValueError(f"{path}: no concurrency with both {STUDENT} and {TEACHER} measured")
    return levels


def size(levels: Iterable[Level], accept_rate: float, images_per_s: float, p99_s: float, spare: int = 0) -> Sizing:
    if not 0.0 <= accept_rate <= 1.0:
        raise ValueError(f"accept rate must be in [0, 1], got {accept_rate}")
    fitting = [lv for lv in levels if lv.p99_s(accept_rate) <= p99_s]
    if not fitting:
        return Sizing(accept_rate, None, float("nan"), min(lv.p99_s(accept_rate) for lv in levels), None)
    best = max(fitting, key=lambda lv: lv.images_per_s(accept_rate))
    per_server = best.images_per_s(accept_rate)
    return Sizing(accept_rate, best.concurrency, per_server, best.p99_s(accept_rate), math.ceil(images_per_s / per_server) + spare)


def markdown_table(rows: Sequence[Sizing], images_per_s: float, p99_s: float) -> str:
    lines = [
        f"| accept rate | concurrency per server | images/s per server | p99 (s) | servers for {images_per_s:g} images/s, p99 <= {p99_s:g} s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r.replicas is None:
            lines.append(f"| {r.accept_rate:g} | none meets the p99 | - | {r.p99_s:.2f} (best) | - |")
        else:
            lines.append(f"| {r.accept_rate:g} | {r.concurrency} | {r.per_server_images_per_s:.2f} | {r.p99_s:.2f} | {r.replicas} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sizing", description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", type=Path, required=True, help="sweep.csv of one server (make bench)")
    p.add_argument("--images-per-s", type=float, required=True, help="target throughput of the fleet")
    p.add_argument("--p99-s", type=float, required=True, help="target p99 latency per image, seconds")
    p.add_argument("--accept-rate", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9], help="expected share of images the student keeps")
    p.add_argument("--spare", type=int, default=0, help="servers beyond the target, so that losing one still meets it")
    args = p.parse_args(argv)
    levels = read_sweep(args.sweep)
    rows = [size(levels, a, args.images_per_s, args.p99_s, args.spare) for a in args.accept_rate]
    print(markdown_table(rows, args.images_per_s, args.p99_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
