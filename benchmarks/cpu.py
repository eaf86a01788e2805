"""CPU seconds used by a process tree (Linux /proc): a cost that other tenants' load barely moves.

On a shared machine wall-clock throughput swings with the neighbours; the CPU time the server's
processes (tritonserver and its Python-backend stubs) spend per image does not, so it backs the
served / in-process throughput ratio with a steadier one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        # comm may contain spaces and parentheses; the fields after the last ')' are fixed.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                parents[int(entry.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        out += children
        frontier += children
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    total = 0
    for p in [pid, *descendants(pid)]:
        fields = _stat(p)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / _TICKS


def own_cpu_seconds() -> float:
    """CPU seconds of this process, all threads."""
    return time.process_time()
