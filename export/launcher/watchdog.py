"""The stub watchdog: Triton 2.51 never restarts a dead Python-backend stub, so the launcher does.

A stub that dies (OOM kill, a segfault in a native library) leaves its model READY, and every
request to it fails with "Stub process '<instance>' is not healthy" until tritonserver restarts.
:func:`supervise` watches the stubs the server had when it became ready and restarts the server
when one is gone, or ends so a supervisor (systemd, Kubernetes) can restart the launcher.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Callable

ON_STUB_CRASH = ("restart", "exit")
POLL_S = 0.5
STUB_CHECK_EVERY = 4  # polls; reading /proc for the stubs every 2 s is plenty


def stub_processes(server_pid: int | None) -> dict[str, int]:
    """Live Python-backend stubs of the server ``server_pid``, by model instance name (``unet_teacher_0_0``)."""
    if server_pid is None:
        return {}
    server = str(server_pid)
    stubs = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[1] != server or fields[0] == "Z":
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        # argv: stub, model.py path, shm region, shm sizes, server pid, backend dir, ..., instance name
        if argv and argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 8:
            stubs[argv[8].decode(errors="replace")] = int(proc.name)
    return stubs


def supervise(
    server: Any,
    stop: threading.Event,
    *,
    on_stub_crash: str = "restart",
    restart_timeout: float = 5.0,
    on_restart: Callable[[], None] | None = None,
    on_restarted: Callable[[], None] | None = None,
) -> bool:
    """Watch a ready ``server`` (a ``TritonServer``) until ``stop`` is set or it exits on its own.

    When a stub dies: ``on_stub_crash="restart"`` restarts the server (in-flight requests get
    ``restart_timeout`` seconds; the dead stub's model never unloads cleanly), ``"exit"`` returns.
    ``on_restart``/``on_restarted`` bracket a restart (the CLI's signal handling needs to know).
    Returns True when it returned because a stub died.
    """
    if on_stub_crash not in ON_STUB_CRASH:
        raise ValueError(f"on_stub_crash must be one of {ON_STUB_CRASH}, got {on_stub_crash!r}")
    polls = 0
    while not stop.wait(POLL_S):
        if not server.is_alive():
            return False
        polls += 1
        crashed = server.crashed_stubs() if polls % STUB_CHECK_EVERY == 0 else []
        if not crashed:
            continue
        print(
            f"error: the Python-backend stub of {', '.join(crashed)} died; Triton 2.51 does not restart it "
            f"and every request to it fails until tritonserver restarts (--on-stub-crash={on_stub_crash})",
            file=sys.stderr,
            flush=True,
        )
        if on_stub_crash == "exit":
            return True
        if on_restart:
            on_restart()
        server.restart(timeout=restart_timeout)
        if on_restarted:
            on_restarted()
        print(f"tritonserver restarted in {server.start_seconds:.1f}s (pid {server.pid})", flush=True)
    return False
