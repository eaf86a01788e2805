"""Supervision: the launcher restarts ``tritonserver`` after any exit it did not ask for.

Two ways the server goes down without being asked:
- it exits or dies (Triton 2.51 segfaults on deeply nested JSON and aborts on a huge declared shape,
  export/SECURITY.md);
- a Python-backend stub dies (OOM kill, a segfault in a native library). Triton 2.51 never restarts
  it: its model stays READY and every request to it fails with "Stub process '<instance>' is not
  healthy" until tritonserver restarts.

:func:`supervise` watches both and restarts the server with exponential backoff within a restart
budget (``RestartPolicy``), or returns so a supervisor (systemd, Kubernetes) restarts the launcher
(``on_crash="exit"``, and when the budget is spent). Every restart says why: a line on stderr, and
the ``adaptive_launcher_restarts{reason}`` gauge the restarted server publishes (the reasons reach
its BLS through the environment, ``RESTARTS_ENV``).
"""

from __future__ import annotations

import collections
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bll_python.restarts import restarts_env

ON_CRASH = ("restart", "exit")
ON_STUB_CRASH = ON_CRASH  # the flag's older name
POLL_S = 0.5
STUB_CHECK_EVERY = 4  # polls; reading /proc for the stubs every 2 s is plenty
EXIT_GRACE_S = 3.0  # after stubs are found dead, how long to watch for the server itself exiting


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


def exit_reason(returncode: int | None) -> str:
    """A bounded metric label for how the server ended: the signal's name, or ``exit_status``."""
    if returncode is not None and returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal_{-returncode}"
    return "exit_status"


def describe_exit(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"was killed by {exit_reason(returncode)} (status {returncode})"
    return f"exited with status {returncode}"


@dataclass
class RestartPolicy:
    """At most ``max_restarts`` within ``window_s``; the n-th restart in a row waits
    ``backoff_s * 2**(n-1)`` (capped at ``max_backoff_s``), so a request that crashes the server
    again and again cannot keep it in a tight restart loop."""

    max_restarts: int = 5
    window_s: float = 600.0
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    _times: collections.deque = field(default_factory=collections.deque, repr=False)

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.window_s <= 0 or self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(f"invalid restart policy {self!r}")

    def _recent(self, now: float) -> int:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        return len(self._times)

    def next_delay(self, now: float | None = None) -> float | None:
        """Seconds to wait before the next restart, or None when the budget is spent."""
        recent = self._recent(time.monotonic() if now is None else now)
        if recent >= self.max_restarts:
            return None
        return min(self.backoff_s * 2 ** (recent - 1), self.max_backoff_s) if recent else 0.0

    def record(self, now: float | None = None) -> None:
        self._times.append(time.monotonic() if now is None else now)


@dataclass
class Outcome:
    """Why :func:`supervise` returned: ``stopped`` (asked to), or the crash it did not restart."""

    stopped: bool
    reason: str = ""
    message: str = ""
    restarts: dict[str, int] = field(default_factory=dict)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def supervise(
    server: Any,
    stop: threading.Event,
    *,
    on_crash: str = "restart",
    policy: RestartPolicy | None = None,
    restart_timeout: float = 5.0,
    on_restart: Callable[[], None] | None = None,
    on_restarted: Callable[[], None] | None = None,
) -> Outcome:
    """Watch a ready ``server`` (a ``TritonServer``) until ``stop`` is set.

    On a crash (the server gone, or one of its stubs): ``on_crash="restart"`` waits the policy's
    backoff and restarts it (a live server with a dead stub is stopped first; in-flight requests get
    ``restart_timeout`` seconds, as the dead stub's model never unloads cleanly); ``"exit"``, or a
    spent budget, returns the crash. ``on_restart``/``on_restarted`` bracket a restart.
    """
    if on_crash not in ON_CRASH:
        raise ValueError(f"on_crash must be one of {ON_CRASH}, got {on_crash!r}")
    policy = policy or RestartPolicy()
    counts: dict[str, int] = {}
    polls = 0
    while not stop.wait(POLL_S):
        polls += 1
        crashed = server.crashed_stubs() if server.is_alive() and polls % STUB_CHECK_EVERY == 0 else []
        if crashed:
            # A dying server takes its stubs first: give it a moment to be seen dying, so the reason
            # is its signal rather than "stub died".
            deadline = time.monotonic() + EXIT_GRACE_S
            while server.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        if server.is_alive():
            if not crashed:
                continue
            reason = "stub_died"
            message = (
                f"the Python-backend stub of {', '.join(crashed)} died; Triton 2.51 does not restart it "
                "and every request to it fails until tritonserver restarts"
            )
        else:
            code = server.returncode
            reason, message = exit_reason(code), f"tritonserver {describe_exit(code)} on its own"
            tail = server.log_tail(5).strip()
            if tail:
                message += f"; its last lines:\n{tail}"
        _say(f"error: {message} (--on-crash={on_crash})")
        if on_crash == "exit":
            return Outcome(False, reason, message, counts)
        delay = policy.next_delay()
        if delay is None:
            _say(f"error: {policy.max_restarts} restarts within {policy.window_s:g}s: giving up (restart budget spent)")
            return Outcome(False, reason, message, counts)
        counts[reason] = counts.get(reason, 0) + 1
        policy.record()
        total = sum(counts.values())
        _say(f"restarting tritonserver (reason {reason}; restart {total}, in {delay:g}s)")
        if on_restart:
            on_restart()
        if server.is_alive():
            server.stop(timeout=restart_timeout)
        if delay and stop.wait(delay):
            break
        server.env_overrides = restarts_env(counts)
        try:
            server.start()
            server.wait_ready()
        except RuntimeError as exc:  # ServerStartError: the next poll sees it down and tries again
            _say(f"error: restart failed: {str(exc).splitlines()[0]}")
            server.stop(timeout=restart_timeout)
            continue
        if on_restarted:
            on_restarted()
        _say(f"tritonserver restarted in {server.start_seconds:.1f}s (pid {server.pid})")
    return Outcome(True, restarts=counts)
