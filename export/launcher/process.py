"""Launch the real ``tritonserver`` shipped in the nvidia-pytriton wheel.

The wheel carries the server binary, the Python backend and one backend stub per Python version,
but not a ready-to-use backend directory nor the environment the stub needs, so this module
assembles both. Used three ways:

- ``python -m export.serve [--repository PATH | --preset tiny]``: foreground server, Ctrl-C/SIGTERM
  stops it cleanly (exit status 0);
- ``TritonServer``: the Python API behind tests (see ``tests/triton_fixtures.py``), benchmarks and
  ``make demo``;
- ``perf_analyzer_command()`` / ``perf_analyzer_env()``: run the perf_analyzer of the tritonclient
  wheel.

Environment the Python-backend stub needs (it embeds CPython and is exec'd by the server):

- ``PATH`` starts with this venv's ``bin``: the embedded interpreter locates ``python3`` on PATH and
  from its ``pyvenv.cfg`` derives ``sys.prefix``, hence the venv's site-packages. PYTHONPATH is not
  how the venv is found.
- ``LD_LIBRARY_PATH`` starts with the LIBDIR of the interpreter that created the venv: the stub links
  ``libpython3.X.so.1.0`` by soname, and without this the distro's libpython (possibly another patch
  release with another stdlib) is picked up.
- ``LD_LIBRARY_PATH`` also has the wheel's ``nvidia_pytriton.libs``: the backend library and the stub
  find their vendored libs (libcudart, libarchive, ...) through an ``$ORIGIN``-relative RPATH that no
  longer holds once they are copied out of the wheel.

The server runs with a working directory that has no ``triton`` folder in it: the stub's interpreter
imports from its cwd, and a ``triton`` folder there shadows the ``triton`` package that torch imports.

Hardening (export/SECURITY.md): it binds 127.0.0.1 and runs ``--model-control-mode=none``; the admin
APIs (repository, shared memory, trace, logging) need a key header (``--admin-key`` / $ADS_ADMIN_KEY,
else a random key only the launcher knows); and since Triton 2.51 never restarts a dead Python-backend
stub, the CLI watches its stubs and restarts the server when one dies.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import hashlib
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
from contextlib import ExitStack
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Iterable, Sequence

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002

# Admin endpoints: anything that changes what the server runs or writes files on its host (trace and
# log settings take file paths). Health, metadata, model config, statistics and inference stay open:
# clients and perf_analyzer need them, and they reveal nothing a client could not infer.
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
DEFAULT_ADMIN_HEADER = "admin-key"
ADMIN_KEY_ENV = "ADS_ADMIN_KEY"
# gRPC carries the header as metadata under this prefix (Triton 2.51's grpc-restricted-protocol).
GRPC_RESTRICTED_PREFIX = "triton-grpc-protocol-"
# Triton parses `<apis>:<header>=<key>`, so neither may contain its separators.
_ADMIN_HEADER_RE = re.compile(r"[a-z0-9][a-z0-9-]*")
_ADMIN_KEY_RE = re.compile(r"[A-Za-z0-9._~-]{16,}")

SHM_DIR = Path("/dev/shm")
# The Python backend names each stub's region <prefix><uuid>; this is its default prefix.
SHM_DEFAULT_PREFIX = "triton_python_backend_shm_region_"
# Our per-server prefix keeps the default one as a stem (so one glob finds every region) and adds the
# launcher's pid, which tells whether a region can still have an owner.
_SHM_OURS = re.compile(re.escape(SHM_DEFAULT_PREFIX) + r"ads(?P<pid>\d+)x(?P<token>[0-9a-f]{8})_")
# A region with a foreign prefix is only removed once unmapped for this long: between shm_open and
# mmap in a starting server it is briefly unmapped but not stale.
_FOREIGN_SHM_GRACE_S = 30.0

_LOG_LINES_KEPT = 5000
_LIBB64_HINT = "apt-get install -y libb64-0d"


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


# ---------------------------------------------------------------------------------------------
# Locating the wheel's pieces and building the environment


def _pytriton_dir() -> Path:
    # find_spec, not import: importing pytriton pulls in its client and logging setup.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed in this environment (it ships tritonserver)")
    return Path(next(iter(spec.submodule_search_locations)))


def tritonserver_dist_dir() -> Path:
    """The ``tritonserver`` tree inside the nvidia-pytriton wheel."""
    return _pytriton_dir() / "tritonserver"


def tritonserver_binary() -> Path:
    return tritonserver_dist_dir() / "bin" / "tritonserver"


def tritonserver_libs_dir() -> Path:
    """The wheel's vendored shared libraries (auditwheel's ``nvidia_pytriton.libs``)."""
    pkg = _pytriton_dir()
    for candidate in (pkg.parent / "nvidia_pytriton.libs", pkg / "tritonserver" / "external_libs"):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"cannot find nvidia_pytriton.libs next to {pkg}")


def python_libdir() -> Path:
    """Directory holding the shared libpython of the interpreter that created this venv."""
    soname = sysconfig.get_config_var("INSTSONAME") or f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
    # sysconfig's LIBDIR is the build-time prefix, which relocated interpreters (pyenv copies,
    # python-build-standalone) no longer live at; base_prefix/lib is where they actually are.
    candidates = [Path(sys.base_prefix) / "lib", Path(sysconfig.get_config_var("LIBDIR") or "")]
    for candidate in candidates:
        if (candidate / soname).exists():
            return candidate
    raise RuntimeError(
        f"{soname} not found in {', '.join(map(str, candidates))}: the Python-backend stub needs the shared "
        "libpython of this interpreter (build Python with --enable-shared)"
    )


def cache_dir() -> Path:
    """Where the assembled backend directory and the server's working directory live."""
    override = os.environ.get("ADS_TRITON_CACHE")
    if override:
        return Path(override)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "adaptive-diffusion-serving" / "tritonserver"


def assemble_backend_dir(root: Path | None = None) -> Path:
    """Return a ``--backend-directory`` whose ``python/`` holds the backend and this Python's stub.

    Built once per (wheel contents, Python version) and published by an atomic rename, so concurrent
    launchers never see a half-copied directory.
    """
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    dist = tritonserver_dist_dir()
    sources = {
        "libtriton_python.so": dist / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": dist / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": dist / "python_backend_stubs" / version / "triton_python_backend_stub",
    }
    missing = [str(p) for p in sources.values() if not p.exists()]
    if missing:
        raise RuntimeError(f"nvidia-pytriton lacks {', '.join(missing)} (no stub for Python {version}?)")
    digest = hashlib.sha256()
    for src in sources.values():
        st = src.stat()
        digest.update(f"{src}:{st.st_size}:{st.st_mtime_ns}".encode())
    root = Path(root) if root is not None else cache_dir()
    target = root / f"backends-py{version}-{digest.hexdigest()[:12]}"
    if (target / "python" / "triton_python_backend_stub").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=root))
    try:
        (staging / "python").mkdir()
        for name, src in sources.items():
            shutil.copy2(src, staging / "python" / name)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide it from other users sharing the cache
        try:
            staging.rename(target)
        except OSError:
            if not (target / "python" / "triton_python_backend_stub").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _safe_workdir() -> Path:
    workdir = cache_dir() / "run"
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "triton").exists():
        raise RuntimeError(f"{workdir / 'triton'} would shadow the triton package in the Python backend; remove it")
    return workdir


def _prepend_paths(value: str | None, *paths: Path | str) -> str:
    parts = [str(p) for p in paths]
    if value:
        parts += [p for p in value.split(os.pathsep) if p and p not in parts]
    return os.pathsep.join(parts)


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``tritonserver`` and the Python-backend stubs it execs (see module docstring)."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = _prepend_paths(env.get("PATH") or os.defpath, Path(sys.prefix) / "bin")
    env["LD_LIBRARY_PATH"] = _prepend_paths(env.get("LD_LIBRARY_PATH"), python_libdir(), tritonserver_libs_dir())
    # A PYTHONHOME meant for another interpreter would make the stub's interpreter fail to start.
    env.pop("PYTHONHOME", None)
    return env


# ---------------------------------------------------------------------------------------------
# Shared-memory regions of the Python backend


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie launcher is dead for our purpose: its server already got PDEATHSIG.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# /proc/<pid>/comm is truncated to 15 characters.
_TRITON_COMMS = {"tritonserver", "triton_python_backend_stub"[:15]}


def _shm_names_in_use(shm_dir: Path) -> tuple[set[str], set[int]]:
    """Names under ``shm_dir`` mapped or open in any process, and the uids of Triton processes we could not inspect."""
    in_use: set[str] = set()
    unreadable_uids: set[int] = set()
    marker = str(shm_dir).rstrip("/") + "/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            with open(proc / "maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    idx = line.find(marker)
                    if idx >= 0:
                        in_use.add(line[idx + len(marker):].rstrip("\n").removesuffix(" (deleted)"))
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(marker):
                    in_use.add(target[len(marker):])
        except FileNotFoundError:
            continue  # exited while we looked
        except PermissionError:
            # Other unreadable processes (a sandbox's init, another user's shell) cannot own
            # backend regions; an unreadable Triton process might, so its uid's regions stay.
            try:
                if (proc / "comm").read_text().strip() in _TRITON_COMMS:
                    unreadable_uids.add(proc.stat().st_uid)
            except OSError:
                pass
        except OSError:
            continue
    return in_use, unreadable_uids


def remove_stale_shm_regions(shm_dir: Path = SHM_DIR) -> list[Path]:
    """Delete Python-backend shm regions whose server is gone (e.g. killed with SIGKILL).

    A region is kept if any live process maps or holds it open, if its name carries the pid of a
    live launcher (our naming scheme), if a Triton process of its owner could not be inspected, or
    if it has a foreign name and was touched recently. Returns the removed paths.
    """
    try:
        candidates = [p for p in shm_dir.iterdir() if p.name.startswith(SHM_DEFAULT_PREFIX)]
    except OSError:
        return []
    if not candidates:
        return []
    in_use, unreadable_uids = _shm_names_in_use(shm_dir)
    removed = []
    now = time.time()
    for path in candidates:
        if path.name in in_use:
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_uid in unreadable_uids:
            continue
        match = _SHM_OURS.match(path.name)
        if match:
            if _pid_alive(int(match["pid"])):
                continue
        elif now - st.st_mtime < _FOREIGN_SHM_GRACE_S:
            continue
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
        except PermissionError:
            continue
    return removed


def _remove_regions_with_prefix(prefix: str, shm_dir: Path = SHM_DIR) -> list[Path]:
    removed = []
    try:
        paths = [p for p in shm_dir.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for path in paths:
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


# ---------------------------------------------------------------------------------------------
# The server process


def _client_host(host: str) -> str:
    # A wildcard bind is reachable on loopback; clients cannot connect to the wildcard itself.
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


def _set_parent_death_signal(parent_pid: int) -> None:
    # Runs in the child between fork and exec. Without it, a launcher killed with SIGKILL (or a
    # crashed pytest) would leave an orphan server holding its ports and shm regions.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(1)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free on ``host`` a moment ago."""
    with ExitStack() as stack:
        ports = []
        # Held open together, so the kernel cannot hand out the same port twice.
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


class TritonServer:
    """A ``tritonserver`` subprocess on a model repository.

    ``with TritonServer(repo, http_port=...) as server:`` starts it, waits until ready, and stops it
    on exit. The server dies with the thread that started it (PR_SET_PDEATHSIG), so start it from a
    thread that outlives its use, normally the main thread.
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
        self.host = host
        self.http_port = int(http_port)
        self.grpc_port = int(grpc_port)
        self.metrics_port = int(metrics_port)
        self.log_verbose = int(log_verbose)
        self.extra_args = tuple(extra_args)
        self.log_file = Path(log_file).resolve() if log_file is not None else None
        self.ready_timeout = ready_timeout
        # tritonserver's own default (30 s) also waits that long for idle HTTP keep-alive
        # connections, which any unclosed tritonclient.http client holds.
        self.exit_timeout = int(exit_timeout)
        # Longer than the server's exit timeout, so its own orderly exit wins over our SIGKILL.
        self.stop_timeout = float(stop_timeout) if stop_timeout is not None else self.exit_timeout + 15.0
        self.echo_logs = echo_logs
        if not _ADMIN_HEADER_RE.fullmatch(admin_header):
            raise ValueError(f"admin header {admin_header!r}: use lowercase letters, digits and '-'")
        # No key given: a random one per launcher, known only to this process, so the admin APIs are
        # closed to everyone else rather than open (see export/SECURITY.md).
        key = admin_key or os.environ.get(ADMIN_KEY_ENV) or secrets.token_urlsafe(32)
        if not _ADMIN_KEY_RE.fullmatch(key):
            raise ValueError("admin key: use at least 16 characters from A-Z a-z 0-9 . _ ~ -")
        self.admin_key = key
        self.admin_header = admin_header
        self.restricted_apis = tuple(restricted_apis)
        self._stubs_at_ready: dict[str, int] = {}
        self.shm_prefix = self._shm_prefix_from(self.extra_args) or (
            f"{SHM_DEFAULT_PREFIX}ads{os.getpid()}x{secrets.token_hex(4)}_"
        )
        self.start_seconds: float | None = None  # spawn to ready, filled by wait_ready()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=_LOG_LINES_KEPT)
        self._lines_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._log_handle: IO[str] | None = None
        self._started_at = 0.0

    @staticmethod
    def _shm_prefix_from(args: Iterable[str]) -> str | None:
        for arg in args:
            m = re.search(r"python,shm-region-prefix-name=(\S+)", arg)
            if m:
                return m.group(1)
        return None

    def _extra_has(self, flag: str) -> bool:
        return any(a == flag or a.startswith(flag + "=") for a in self.extra_args)

    def _expected_ports(self) -> set[int]:
        ports = {self.http_port}
        disabled = {a.split("=", 1)[0] for a in self.extra_args if a.lower().endswith(("=false", "=0"))}
        if "--allow-grpc" not in disabled:
            ports.add(self.grpc_port)
        if "--allow-metrics" not in disabled:
            ports.add(self.metrics_port)
        return ports

    # -- addresses ---------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """``host:port`` for ``tritonclient.http`` (no scheme)."""
        return _hostport(_client_host(self.host), self.http_port)

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc`` and ``perf_analyzer -u``."""
        return _hostport(_client_host(self.host), self.grpc_port)

    @property
    def metrics_url(self) -> str:
        """``host:port`` of the Prometheus endpoint (served at ``/metrics``)."""
        return _hostport(_client_host(self.host), self.metrics_port)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- command line ------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The full ``tritonserver`` command line (assembles the backend directory if needed)."""
        cmd = [
            str(tritonserver_binary()),
            f"--model-repository={self.repository}",
            f"--backend-directory={assemble_backend_dir()}",
            "--model-control-mode=none",
            "--disable-auto-complete-config",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
        ]
        if not self._extra_has("--exit-timeout-secs"):
            cmd.append(f"--exit-timeout-secs={self.exit_timeout}")
        # An operator who passes their own restriction flags in extra_args owns the whole policy.
        if self.restricted_apis and not (self._extra_has("--http-restricted-api") or self._extra_has("--grpc-restricted-protocol")):
            rule = f"{','.join(self.restricted_apis)}:{self.admin_header}={self.admin_key}"
            cmd += [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
        if self._shm_prefix_from(self.extra_args) is None:
            cmd.append(f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}")
        cmd.extend(self.extra_args)
        return cmd

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the server (after removing stale shm regions); returns without waiting."""
        if self.is_alive():
            raise RuntimeError(f"tritonserver already running (pid {self.pid})")
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository {self.repository} does not exist")
        remove_stale_shm_regions()
        cmd = self.command()
        env = server_env()
        workdir = _safe_workdir()
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
            preexec_fn=lambda: _set_parent_death_signal(parent),
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
            if self._expected_ports() <= _listening_ports(self._proc.pid) and self._http_ok(url):
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

    # -- admin access and stub health ------------------------------------------------------
    def admin_headers(self, protocol: str = "http") -> dict[str, str]:
        """Headers that open the restricted APIs: pass as ``headers=`` to tritonclient calls."""
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        name = self.admin_header if protocol == "http" else GRPC_RESTRICTED_PREFIX + self.admin_header
        return {name: self.admin_key}

    def stub_processes(self) -> dict[str, int]:
        """Live Python-backend stubs of this server, by model instance name (e.g. ``unet_teacher_0_0``)."""
        if not self.is_alive():
            return {}
        server = str(self.pid)
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
        if _SHM_OURS.fullmatch(self.shm_prefix):
            _remove_regions_with_prefix(self.shm_prefix)

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


# ---------------------------------------------------------------------------------------------
# perf_analyzer


def _site_packages_dirs() -> list[Path]:
    dirs = [Path(p) for p in sys.path if p and p.endswith("site-packages")]
    for key in ("purelib", "platlib"):
        path = Path(sysconfig.get_paths()[key])
        if path not in dirs:
            dirs.append(path)
    return dirs


def _perf_analyzer_binary() -> Path:
    candidates = []
    for site in _site_packages_dirs():
        candidates += [site / "tritonclient" / "bin" / "perf_analyzer", site / "tritonclient" / "perf_analyzer"]
    # Recent tritonclient wheels install it as a data script into the venv's bin.
    candidates += [Path(sys.prefix) / "bin" / "perf_analyzer", Path(sysconfig.get_paths()["scripts"]) / "perf_analyzer"]
    on_path = shutil.which("perf_analyzer")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("perf_analyzer not found: install tritonclient[all]==2.51.0 (it ships the binary)")


def _cuda_runtime_libdir() -> Path | None:
    for site in _site_packages_dirs():
        libdir = site / "nvidia" / "cuda_runtime" / "lib"
        if (libdir / "libcudart.so.12").exists():
            return libdir
    return None


def perf_analyzer_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for perf_analyzer: libcudart.so.12 from nvidia-cuda-runtime-cu12 on LD_LIBRARY_PATH.

    perf_analyzer links libcudart even when no GPU is used, and does not carry its own.
    """
    env = dict(os.environ if base is None else base)
    libdir = _cuda_runtime_libdir()
    if libdir is None:
        raise RuntimeError("libcudart.so.12 not found: pip install nvidia-cuda-runtime-cu12 (perf_analyzer needs it)")
    env["LD_LIBRARY_PATH"] = _prepend_paths(env.get("LD_LIBRARY_PATH"), libdir)
    return env


def _libb64_available(env: dict[str, str]) -> bool:
    for d in env.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if d and (Path(d) / "libb64.so.0d").exists():
            return True
    try:
        ctypes.CDLL("libb64.so.0d")
        return True
    except OSError:
        return False


def perf_analyzer_command() -> list[str]:
    """``[path/to/perf_analyzer]``; append its arguments and run it with ``env=perf_analyzer_env()``.

    Raises RuntimeError with the install command when Debian's libb64 (``libb64.so.0d``), which the
    binary links dynamically, is missing.
    """
    binary = _perf_analyzer_binary()
    if not _libb64_available(perf_analyzer_env()):
        raise RuntimeError(
            f"perf_analyzer ({binary}) needs libb64.so.0d, which is not installed. Install it with: {_LIBB64_HINT}"
        )
    return [str(binary)]


# ---------------------------------------------------------------------------------------------
# CLI


class _Interrupted(Exception):
    pass


def _parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m export.serve",
        description="Run tritonserver (from the nvidia-pytriton wheel) in the foreground on a model repository. "
        "Arguments after `--` go to tritonserver unchanged.",
    )
    parser.add_argument("--repository", type=Path, help="model repository (default: build the --preset one)")
    parser.add_argument("--preset", default="tiny", help="preset whose repository is built/reused when --repository is absent")
    parser.add_argument("--host", default=DEFAULT_HOST, help="bind address for HTTP, gRPC and metrics")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    parser.add_argument("--log-file", type=Path, help="also write the server log here")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--exit-timeout", type=int, default=10, help="seconds the server waits for in-flight work on stop")
    parser.add_argument(
        "--admin-key",
        default=None,
        help=f"key that opens the admin APIs ({', '.join(RESTRICTED_APIS)}); default: ${ADMIN_KEY_ENV}, else random per start "
        "(admin calls refused). Prefer the environment variable: arguments are visible in ps",
    )
    parser.add_argument("--admin-header", default=DEFAULT_ADMIN_HEADER, help="HTTP header carrying the admin key (gRPC: triton-grpc-protocol-<header>)")
    parser.add_argument("--admin-key-file", type=Path, help="write the admin key here (mode 0600), e.g. to use a generated one")
    parser.add_argument(
        "--on-stub-crash",
        choices=("restart", "exit"),
        default="restart",
        help="when a Python-backend stub dies (Triton 2.51 leaves the model failing): restart tritonserver, "
        "or exit with status 3 for a supervisor to restart",
    )
    return parser.parse_args(argv), extra


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGINT/SIGTERM; 0 after a clean stop, else the server's status (or 1)."""
    args, extra = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.repository is None:
        from export.build import ensure_repository  # heavy (torch/diffusers): only when building

        repository = Path(ensure_repository(args.preset))
    else:
        repository = args.repository

    server = TritonServer(
        repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=args.log_verbose,
        extra_args=extra,
        log_file=args.log_file,
        ready_timeout=args.ready_timeout,
        exit_timeout=args.exit_timeout,
        echo_logs=True,
        admin_key=args.admin_key,
        admin_header=args.admin_header,
    )
    if args.admin_key_file is not None:
        fd = os.open(args.admin_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        with os.fdopen(fd, "w") as f:
            f.write(server.admin_key + "\n")
    received: list[int] = []
    stop_requested = threading.Event()
    ready = False
    stub_crashed = False

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop_requested.set()
        if not ready:
            raise _Interrupted  # unblock wait_ready()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        server.wait_ready()
        ready = True
        print(
            f"tritonserver ready in {server.start_seconds:.1f}s (pid {server.pid}), repository {server.repository}\n"
            f"  HTTP     http://{server.http_url}\n"
            f"  gRPC     {server.grpc_url}\n"
            f"  metrics  http://{server.metrics_url}/metrics\n"
            f"  admin    {', '.join(server.restricted_apis)} need header {server.admin_header!r} "
            f"(gRPC metadata {GRPC_RESTRICTED_PREFIX + server.admin_header!r})\n"
            "Ctrl-C or SIGTERM stops it.",
            flush=True,
        )
        ticks = 0
        while not stop_requested.wait(0.5):
            if not server.is_alive():
                break
            ticks += 1
            crashed = server.crashed_stubs() if ticks % 4 == 0 else []
            if crashed:
                print(
                    f"error: the Python-backend stub of {', '.join(crashed)} died; Triton 2.51 does not restart it "
                    f"and every request to it fails until tritonserver restarts (--on-stub-crash={args.on_stub_crash})",
                    file=sys.stderr,
                    flush=True,
                )
                if args.on_stub_crash == "exit":
                    stub_crashed = True
                    break
                ready = False
                # In-flight requests get a few seconds; the dead stub's model never unloads cleanly.
                server.restart(timeout=min(5.0, float(args.exit_timeout)))
                ready = True
                print(f"tritonserver restarted in {server.start_seconds:.1f}s (pid {server.pid})", flush=True)
    except _Interrupted:
        pass
    except ServerStartError as exc:
        # Its log was already echoed; the message repeats the tail for when it scrolled away.
        print(f"error: {exc}", file=sys.stderr)
        server.stop()
        return exc.returncode if exc.returncode and exc.returncode > 0 else 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        code = server.stop(sig=received[0] if received else signal.SIGTERM)

    if received:
        return 0 if code == 0 else (code if code and code > 0 else 1)
    if stub_crashed:
        return 3
    print(f"error: tritonserver exited on its own with status {code}\n{server.log_tail()}", file=sys.stderr)
    return code if code and code > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
