"""HAProxy as a child process: write the config, check it, run it in the foreground, stop it."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from export.gateway.config import GatewayConfig
from export.gateway.haproxy import render


class GatewayError(RuntimeError):
    pass


def haproxy_binary() -> Path:
    found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None)
    if not found:
        raise GatewayError("haproxy is not installed: `make system-deps` (as root) or `apt-get install -y haproxy`")
    return Path(found)


class Gateway:
    """``with Gateway(config) as gw:`` runs HAProxy on ``config`` until the block ends."""

    def __init__(self, config: GatewayConfig, workdir: Path | None = None) -> None:
        self.config = config
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="gateway_")
        self.workdir = Path(workdir) if workdir else Path(self._tmp.name)
        self.config_path = self.workdir / "haproxy.cfg"
        self.log_path = self.workdir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def check(self) -> None:
        """Write the config and have HAProxy validate it (``haproxy -c``)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render(self.config))
        done = subprocess.run([str(haproxy_binary()), "-c", "-q", "-f", str(self.config_path)], capture_output=True, text=True)
        if done.returncode != 0:
            raise GatewayError(f"haproxy rejects {self.config_path}:\n{done.stdout}{done.stderr}")

    def start(self, timeout: float = 30.0) -> None:
        self.check()
        # -db: foreground, no daemon; -W would add a master process we would have to manage too.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(haproxy_binary()), "-db", "-f", str(self.config_path)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.log_path.read_text(errors="replace")[-4000:]
                raise GatewayError(f"haproxy exited with status {self.proc.returncode}:\n{out}")
            try:
                with socket.create_connection((self.config.host, self.config.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise GatewayError(f"haproxy not listening on {self.url} after {timeout:g}s")

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # soft stop: finish the requests in flight
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "Gateway":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
