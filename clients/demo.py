"""`make demo`: export the tiny default if needed, serve it, generate over HTTP and gRPC, stop.

Prints the table of each protocol's images and the timings of every stage.
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo", description=__doc__)
    p.add_argument("--preset", default="tiny")
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
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            t = time.perf_counter()
            results = generate_all(lambda: AdaptiveClient(url, protocol), DEMO_PROMPTS, 0, None, 3, {"strategy": args.strategy})
            timings[f"{len(results)} images over {protocol}"] = time.perf_counter() - t
            paths = save_pngs(results, args.out, tag=f"{protocol}_")
            print(f"\n[{protocol}] {len(paths)} PNGs in {args.out}/")
            print(table(results))
        t = time.perf_counter()
    timings["server stop"] = time.perf_counter() - t
    print("\ntimings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
