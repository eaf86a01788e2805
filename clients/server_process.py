"""A tritonserver started the way an operator starts one: ``python -m export.launcher`` as a child process.

The demo and the benchmarks use it, so they depend on the launcher's command line, not on its code::

    with ServerProcess(repository) as server:        # free ports, ready when /v2/health/ready answers
        client = AdaptiveClient(server.grpc_url, "grpc")

The launcher's output (its banner and the server log) goes to ``log``; SIGTERM stops it, and it stops
the server cleanly. It runs with ``--exit-with-parent``, so a crashed benchmark leaves no server behind;
as with any parent-death signal, start it from a thread that outlives the server (normally the main one).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from clients.ports import free_ports

ROOT = Path(__file__).resolve().parent.parent
READY_BANNER = "tritonserver ready"  # the launcher prints it once its own server answers on every port


def _temporary_log() -> Path:
    fd, name = tempfile.mkstemp(prefix="tritonserver_", suffix=".log")
    os.close(fd)
    return Path(name)


class ServerProcessError(RuntimeError):
    """The launcher exited, or its server was not ready in time; the message ends with its log tail."""


class ServerProcess:
    def __init__(
        self,
        repository: Path,
        *,
        ports: Sequence[int] | None = None,
        host: str = "127.0.0.1",
        ready_timeout: float = 120.0,
        log: Path | None = None,
        launcher_args: Sequence[str] = (),
        server_args: Sequence[str] = (),
    ) -> None:
        self.repository = Path(repository)
        self.host = host
        self._fixed_ports = ports is not None
        self.http_port, self.grpc_port, self.metrics_port = ports if ports is not None else free_ports(3, host)
        self.ready_timeout = ready_timeout
        self.log = Path(log) if log is not None else _temporary_log()
        self.launcher_args = list(launcher_args)
        self.server_args = list(server_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.host}:{self.metrics_port}"

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "export.launcher", "--repository", str(self.repository), "--host", self.host,
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
            "--ready-timeout", str(self.ready_timeout), "--exit-with-parent", *self.launcher_args,
        ]  # fmt: skip
        return cmd + (["--", *self.server_args] if self.server_args else [])

    @property
    def launcher_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def pid(self) -> int | None:
        """The tritonserver process (the launcher's child): what CPU and memory accounting measures."""
        if not self.is_alive():
            return None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        for child in children:
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "tritonserver":
                    return int(child)
            except OSError:
                continue
        return None

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> None:
        """Run the launcher; returns without waiting."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        """Until the launcher has announced its server and ``/v2/health/ready`` answers 200."""
        assert self.proc is not None, "start() first"
        # The launcher waits ready_timeout for tritonserver itself; allow for its own start-up too.
        deadline = time.monotonic() + self.ready_timeout + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerProcessError(f"the launcher exited with status {self.proc.returncode}; log {self.log}:\n{self.log_tail()}")
            if READY_BANNER in self.log_tail(200) and self._health_ok():
                return
            time.sleep(0.1)
        raise ServerProcessError(f"server not ready after {self.ready_timeout + 30:.0f} s; log {self.log}:\n{self.log_tail()}")

    def _health_ok(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1.0) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM the launcher (it stops the server cleanly), SIGKILL after ``timeout``; its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        for attempt in range(2):
            self.start()
            try:
                self.wait_ready()
                return self
            except ServerProcessError:
                self.stop()
                # A picked port taken in between: once more on new ones.
                if attempt == 0 and not self._fixed_ports and "already in use" in self.log_tail(200):
                    self.http_port, self.grpc_port, self.metrics_port = free_ports(3, self.host)
                    continue
                raise
        raise AssertionError("unreachable")

    def __exit__(self, *exc: object) -> None:
        self.stop()
