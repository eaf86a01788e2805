"""`make demo`: export the preset if needed (default ``shapes``, the trained world), serve it,
generate over HTTP and gRPC, stop.

Prints the table of each protocol's images and the timings of every stage. For ``shapes`` it also
draws the student's sample of every prompt (``student_only``, same seed) and writes
``contact_sheet.png``: each student sample beside the served result, with the route and the
judge's verdict on both.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from clients.cli import generate_all, save_pngs, table
from clients.client import AdaptiveClient
from clients.ports import free_ports, port_free
from clients.server_process import ServerProcess

DEMO_PROMPTS = [
    "a red fox standing in the snow, 35mm photograph",
    "an old lighthouse at sunset, oil painting",
    "a bowl of ramen on a wooden table",
    "a robot barista lit by neon signs, digital art",
    "a field of sunflowers under a starry sky",
    "two cats on a sofa, watercolor",
]
# Held-out prompts (benchmarks/prompts/shapes_heldout.txt): no training stage saw them.
SHAPES_PROMPTS = [
    "a red triangle",
    "a big green cross",
    "a yellow square on the left",
    "two purple crosses",
    "three blue squares",
    "a red circle to the right of a purple square",
    "a green square below a yellow cross",
    "a blue circle to the left of a red triangle",
]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo", description=__doc__)
    p.add_argument("--preset", default="shapes")
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--strategy", default="refine")
    args = p.parse_args(argv)

    from export.build import ensure_repository

    timings: dict[str, float] = {}
    t = time.perf_counter()
    repository = ensure_repository(args.preset)
    timings["export (or reuse)"] = time.perf_counter() - t

    ports = (8000, 8001, 8002)
    if not all(port_free(port) for port in ports):  # a server already owns the defaults: use others
        ports = tuple(free_ports(3))
    t = time.perf_counter()
    with ServerProcess(repository, ports=ports, log=args.out / "server.log") as server:
        timings["server start"] = time.perf_counter() - t
        print(f"tritonserver ready: http {server.http_url}  grpc {server.grpc_url}  metrics {server.metrics_url}  (log {server.log})")
        prompts = SHAPES_PROMPTS if args.preset == "shapes" else DEMO_PROMPTS
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            t = time.perf_counter()
            results = generate_all(lambda: AdaptiveClient(url, protocol), prompts, 0, None, 3, {"strategy": args.strategy})
            timings[f"{len(results)} images over {protocol}"] = time.perf_counter() - t
            paths = save_pngs(results, args.out, tag=f"{protocol}_")
            print(f"\n[{protocol}] {len(paths)} PNGs in {args.out}/")
            print(table(results))
        if args.preset == "shapes":
            print(f"\ncontact sheet: {shapes_contact_sheet(server.grpc_url, prompts, results, args.out)}")
        t = time.perf_counter()
    timings["server stop"] = time.perf_counter() - t
    print("\ntimings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return 0


def shapes_contact_sheet(url: str, prompts: list[str], results: list, out: Path) -> Path:
    """The student's sample of each prompt beside the served result, judged (the judge only looks)."""
    from clients.contact_sheet import contact_sheet
    from export.world.judge import judge

    students = generate_all(lambda: AdaptiveClient(url, "grpc"), prompts, 0, None, 3, {"strategy": "student_only"})

    def verdict(image, prompt: str) -> str:
        v = judge(image, prompt)
        failed = [k.split(".")[-1] for k, ok in v.checks.items() if not ok]
        return "judge: all correct" if not failed else "judge: wrong " + ", ".join(dict.fromkeys(failed))

    return contact_sheet(students, results, out / "contact_sheet.png", verdict)


if __name__ == "__main__":
    sys.exit(main())
