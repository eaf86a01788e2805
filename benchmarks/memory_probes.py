"""Memory that oversized requests leave behind, with and without the gateway (issue 16).

Starts the launcher with its gateway (``--gateway-port``) on the tiny preset, then sends the large
requests of tests/attack_probes.py straight to Triton and through the gateway, and reports for each
the resident memory of tritonserver with all its stubs and the size of its Python-backend
shared-memory regions: before, peak (sampled every 50 ms) and after::

    python -m benchmarks.memory_probes [--repository PATH] [--big-mib 200] [--prompt-mib 20 --prompts 10]

Prints a table and writes ``benchmarks/results/security/memory.json``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Callable

from clients.ports import free_ports
from clients.server_process import ServerProcess
from tests.attack_probes import big_body, send

RESULTS = Path(__file__).resolve().parent / "results" / "security"


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (tritonserver and its stubs)."""
    total = 0
    for p in _descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def shm_bytes(pid: int) -> int:
    """Bytes allocated in /dev/shm by the Python-backend regions of this server's stubs."""
    regions = set()
    for p in _descendants(pid):
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 2:
            regions.add(argv[2].decode().lstrip("/"))
    total = 0
    for f in Path("/dev/shm").iterdir():
        if any(f.name.startswith(r) for r in regions):
            try:
                total += f.stat().st_blocks * 512
            except OSError:
                continue
    return total


def measure(pid: int, action: Callable[[], list[int]]) -> dict:
    """Before, peak and after of RSS and shm around ``action`` (which returns the HTTP statuses)."""
    before = (rss_bytes(pid), shm_bytes(pid))
    peak = list(before)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0], peak[1] = max(peak[0], rss_bytes(pid)), max(peak[1], shm_bytes(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    statuses = action()
    seconds = time.monotonic() - start
    time.sleep(2.0)  # let the server return what it will before "after"
    done.set()
    sampler.join()
    after = (rss_bytes(pid), shm_bytes(pid))
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    return {
        "statuses": sorted(set(statuses)),
        "seconds": round(seconds, 2),
        "rss_mib": {"before": mib(before[0]), "peak": mib(max(peak[0], after[0])), "after": mib(after[0])},
        "shm_mib": {"before": mib(before[1]), "peak": mib(max(peak[1], after[1])), "after": mib(after[1])},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_probes", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path)
    parser.add_argument("--big-mib", type=int, default=200)
    parser.add_argument("--prompt-mib", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "memory.json")
    args = parser.parse_args(argv)
    if args.repository is None:
        from export.build import ensure_repository

        args.repository = ensure_repository("tiny", progress=False)
    gateway_port = free_ports(1)[0]
    big, prompt = big_body(args.big_mib), big_body(args.prompt_mib)
    rows = []
    with ServerProcess(args.repository, ready_timeout=600, launcher_args=["--gateway-port", str(gateway_port)]) as server:
        gateway = f"127.0.0.1:{gateway_port}"
        for where, url in (("tritonserver", server.http_url), ("gateway", gateway)):
            pid = server.pid
            assert pid is not None
            rows.append({"probe": f"{args.prompts} x {prompt.name}", "to": where, **measure(pid, lambda: [send(url, prompt, 600)[0] for _ in range(args.prompts)])})
            rows.append({"probe": big.name, "to": where, **measure(pid, lambda: [send(url, big, 600)[0]])})
    header = f"{'probe':<22} {'to':<13} {'status':<8} {'RSS MiB before/peak/after':<28} {'shm MiB before/peak/after':<28}"
    print(header)
    for r in rows:
        rss, shm = r["rss_mib"], r["shm_mib"]
        print(f"{r['probe']:<22} {r['to']:<13} {','.join(map(str, r['statuses'])):<8} "
              f"{rss['before']:>8} / {rss['peak']:>8} / {rss['after']:>8}   {shm['before']:>8} / {shm['peak']:>8} / {shm['after']:>8}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"repository": str(args.repository), "rows": rows}, indent=2))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
