"""A ``tritonserver`` subprocess on a model repository: start, wait until ready, stop, restart.

The API behind the launcher's CLI and the test fixtures (``tests/triton_fixtures.py``). Clients and
benchmarks run the CLI instead (``clients/server_process.py``). The server's flags are a
:class:`~export.launcher.config.ServerConfig`, including the ones the repository itself records
(``tritonserver_args.json``, e.g. the TensorRT writer's CUDA pool).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, Sequence

from bll_python.layout import read_server_args
from export.launcher.config import (
    DEFAULT_ADMIN_HEADER,
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    RESTRICTED_APIS,
    ServerConfig,
    resolve_admin_key,
    shm_prefix_in,
)
from export.launcher.environment import assemble_backend_dir, safe_workdir, server_env, tritonserver_binary
from export.launcher.shm import is_our_prefix, our_prefix, remove_regions_with_prefix, remove_stale_shm_regions
from export.launcher.watchdog import stub_processes

_LOG_LINES_KEPT = 5000


class ServerStartError(RuntimeError):
    """The server exited, or did not become ready in time, during start-up."""

    def __init__(self, message: str, log_tail: str = "", returncode: int | None = None) -> None:
        super().__init__(f"{message}\n--- tritonserver log tail ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail
        self.returncode = returncode

    @property
    def address_in_use(self) -> bool:
        """True when a port was already taken; worth retrying on other ports."""
        return "already in use" in self.log_tail or "Address already in use" in self.log_tail

def _listening_ports(pid: int) -> set[int]:
    """TCP ports on which process ``pid`` holds a listening socket (Linux /proc)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # fields: sl local_address rem_address st ... inode (index 9); 0A is LISTEN
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def exit_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when ``parent_pid``, its parent now, exits (Linux PR_SET_PDEATHSIG).

    Run in the server between fork and exec: without it, a launcher killed with SIGKILL (or a crashed
    pytest) would leave an orphan server holding its ports and shm regions. The launcher runs it on
    itself under ``--exit-with-parent``, for whoever started it as a child process.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent was gone before the signal was armed
        os._exit(1)


class TritonServer:
    """A ``tritonserver`` subprocess on a model repository.

    ``with TritonServer(repo, http_port=...) as server:`` starts it, waits until ready, and stops it
    on exit. The server dies with the thread that started it (PR_SET_PDEATHSIG), so start it from a
    thread that outlives its use, normally the main thread. Its flags (ports, admin key, shm prefix,
    ...) are ``server.config`` and readable as attributes (``server.http_port``).
    """

    def __init__(
        self,
        repository: Path,
        *,
        host: str = DEFAULT_HOST,
        http_port: int = DEFAULT_HTTP_PORT,
        grpc_port: int = DEFAULT_GRPC_PORT,
        metrics_port: int = DEFAULT_METRICS_PORT,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
        log_file: Path | None = None,
        ready_timeout: float = 60.0,
        exit_timeout: int = 10,
        stop_timeout: float | None = None,
        echo_logs: bool = False,
        admin_key: str | None = None,
        admin_header: str = DEFAULT_ADMIN_HEADER,
        restricted_apis: Sequence[str] = RESTRICTED_APIS,
    ) -> None:
        self.repository = Path(repository).resolve()
        # The repository's own flags first, so the caller's extra_args can override them.
        extra = tuple(read_server_args(self.repository)) + tuple(extra_args)
        self.config = ServerConfig(
            repository=self.repository,
            admin_key=resolve_admin_key(admin_key),
            shm_prefix=shm_prefix_in(extra) or our_prefix(),
            host=host,
            http_port=int(http_port),
            grpc_port=int(grpc_port),
            metrics_port=int(metrics_port),
            log_verbose=int(log_verbose),
            exit_timeout=int(exit_timeout),
            admin_header=admin_header,
            restricted_apis=tuple(restricted_apis),
            extra_args=extra,
        )
        self.log_file = Path(log_file).resolve() if log_file is not None else None
        self.ready_timeout = ready_timeout
        # Longer than the server's exit timeout, so its own orderly exit wins over our SIGKILL.
        self.stop_timeout = float(stop_timeout) if stop_timeout is not None else self.config.exit_timeout + 15.0
        self.echo_logs = echo_logs
        self._stubs_at_ready: dict[str, int] = {}
        self.start_seconds: float | None = None  # spawn to ready, filled by wait_ready()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=_LOG_LINES_KEPT)
        self._lines_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._log_handle: IO[str] | None = None
        self._started_at = 0.0
        # Variables added to the server's environment (the watchdog's restart counts).
        self.env_overrides: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        # The flags: server.http_port, server.admin_key, server.shm_prefix, ...
        config = self.__dict__.get("config")
        if config is not None and name in ServerConfig.__dataclass_fields__:
            return getattr(config, name)
        raise AttributeError(name)

    @property
    def http_url(self) -> str:
        return self.config.http_url

    @property
    def grpc_url(self) -> str:
        return self.config.grpc_url

    @property
    def metrics_url(self) -> str:
        return self.config.metrics_url

    def admin_headers(self, protocol: str = "http") -> dict[str, str]:
        """Headers that open the restricted APIs: pass as ``headers=`` to tritonclient calls."""
        return self.config.admin_headers(protocol)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The full ``tritonserver`` command line (assembles the backend directory if needed)."""
        return [str(tritonserver_binary()), *replace(self.config, backend_directory=assemble_backend_dir()).to_args()]

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the server (after removing stale shm regions); returns without waiting."""
        if self.is_alive():
            raise RuntimeError(f"tritonserver already running (pid {self.pid})")
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository {self.repository} does not exist")
        remove_stale_shm_regions()
        cmd = self.command()
        env = {**server_env(), **self.env_overrides}
        workdir = safe_workdir()
        with self._lines_lock:
            self._lines.clear()
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_file, "a", encoding="utf-8")
        parent = os.getpid()
        self._started_at = time.monotonic()
        self.start_seconds = None
        self._proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Own session: a terminal's Ctrl-C reaches only the launcher, which forwards exactly one
            # signal (tritonserver treats a second one as "exit now").
            start_new_session=True,
            preexec_fn=lambda: exit_with_parent(parent),
        )
        self._reader = threading.Thread(target=self._pump_logs, name=f"tritonserver-log-{self._proc.pid}", daemon=True)
        self._reader.start()

    def _pump_logs(self) -> None:
        # This thread owns the pipe and the log file: the backend stubs inherit the server's
        # stdout, so EOF may come a moment after the server itself has exited.
        assert self._proc is not None and self._proc.stdout is not None
        stdout, log_handle = self._proc.stdout, self._log_handle
        try:
            for raw in stdout:
                line = raw.decode("utf-8", errors="replace")
                with self._lines_lock:
                    self._lines.append(line)
                if log_handle is not None:
                    log_handle.write(line)
                    log_handle.flush()
                if self.echo_logs:
                    sys.stderr.write(line)
                    sys.stderr.flush()
        finally:
            stdout.close()
            if log_handle is not None:
                log_handle.close()

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines the server printed (stdout and stderr)."""
        with self._lines_lock:
            lines = list(self._lines)[-n:] if n > 0 else []
        return "".join(lines)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until ``/v2/health/ready`` answers 200; raise ServerStartError if the server exits first."""
        if self._proc is None:
            raise RuntimeError("start() the server first")
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        url = f"http://{self.http_url}/v2/health/ready"
        while True:
            code = self._proc.poll()
            if code is not None:
                self._finish_exit()
                raise ServerStartError(
                    f"tritonserver exited with status {code} before becoming ready", self.log_tail(), code
                )
            # "Started HTTPService" is logged before the bind that may still fail, and a foreign
            # process holding our port could answer the health check: require that this very
            # process listens on every port, then that it reports ready.
            if self.config.expected_ports() <= _listening_ports(self._proc.pid) and self._http_ok(url):
                self.start_seconds = time.monotonic() - self._started_at
                self._stubs_at_ready = self.stub_processes()
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"tritonserver not ready after {time.monotonic() - self._started_at:.1f}s", self.log_tail()
                )
            time.sleep(0.05)

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    # -- stub health -------------------------------------------------------------------------
    def stub_processes(self) -> dict[str, int]:
        """Live Python-backend stubs of this server, by model instance name (e.g. ``unet_teacher_0_0``)."""
        return stub_processes(self.pid) if self.is_alive() else {}

    def crashed_stubs(self) -> list[str]:
        """Model instances whose stub process died since the server became ready.

        Triton 2.51's Python backend does not restart a dead stub: the model stays READY and every
        request to it fails with "Stub process '<instance>' is not healthy" until the server restarts.
        """
        alive = self.stub_processes()
        return sorted(name for name, pid in self._stubs_at_ready.items() if alive.get(name) != pid)

    def restart(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> None:
        """Stop (``timeout`` as in :meth:`stop`), start again on the same ports and admin key, wait until ready.

        After a stub crash the server's own shutdown waits its whole exit timeout for the dead
        stub's model to unload, so a short ``timeout`` is worth passing then.
        """
        self.stop(sig, timeout)
        self.start()
        self.wait_ready()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the server to exit by itself; returns its exit status."""
        if self._proc is None:
            raise RuntimeError("server was never started")
        code = self._proc.wait(timeout)
        self._finish_exit()
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int | None:
        """Send ``sig``, wait up to ``timeout`` (default ``stop_timeout``), then SIGKILL.

        Returns the exit status: 0 after a clean shutdown on SIGINT/SIGTERM; 1 when the server's
        own exit timeout expired first (in-flight requests or open HTTP keep-alive connections);
        ``-9`` when it had to be killed; ``None`` if it was never started.
        """
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            try:
                self._proc.send_signal(sig)
                self._proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            except ProcessLookupError:
                pass
        self._proc.wait()
        self._finish_exit()
        return self._proc.returncode

    def _finish_exit(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        self._log_handle = None
        # Only this server used a prefix of our scheme and it is gone: whatever it left (after
        # SIGKILL or a crash) can go now rather than at the next start's stale sweep. A prefix
        # passed in extra_args may be shared, so it is left to that sweep.
        if is_our_prefix(self.shm_prefix):
            remove_regions_with_prefix(self.shm_prefix)

    def __enter__(self) -> "TritonServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TritonServer(repository={str(self.repository)!r}, http={self.http_url}, grpc={self.grpc_url}, pid={self.pid})"

