"""tritonserver's flags as data: :class:`ServerConfig` and ``to_args()`` (pytriton's ``TritonServerConfig``).

Hardening (export/SECURITY.md): it binds 127.0.0.1 and runs ``--model-control-mode=none``; the admin
APIs (repository, shared memory, trace, logging) need a key header (``--admin-key`` / $ADS_ADMIN_KEY,
else a random key only the launcher knows). Flags an operator passes in ``extra_args`` come last and
replace the launcher's own for the same setting.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

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
_SHM_PREFIX_FLAG = re.compile(r"python,shm-region-prefix-name=(\S+)")


def resolve_admin_key(admin_key: str | None) -> str:
    """The key given, else $ADS_ADMIN_KEY, else a random one known only to this launcher (admin calls
    are then closed to everyone rather than open; see export/SECURITY.md)."""
    return admin_key or os.environ.get(ADMIN_KEY_ENV) or secrets.token_urlsafe(32)


def shm_prefix_in(args: tuple[str, ...] | list[str]) -> str | None:
    """The Python backend's shm region prefix set by ``args``, if any."""
    for arg in args:
        match = _SHM_PREFIX_FLAG.search(arg)
        if match:
            return match.group(1)
    return None


def _client_host(host: str) -> str:
    # A wildcard bind is reachable on loopback; clients cannot connect to the wildcard itself.
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ServerConfig:
    repository: Path
    admin_key: str
    shm_prefix: str
    backend_directory: Path | None = None  # filled in when the command line is built
    host: str = DEFAULT_HOST
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    log_verbose: int = 0
    # tritonserver's own default (30 s) also waits that long for idle HTTP keep-alive connections,
    # which any unclosed tritonclient.http client holds.
    exit_timeout: int = 10
    admin_header: str = DEFAULT_ADMIN_HEADER
    restricted_apis: tuple[str, ...] = RESTRICTED_APIS
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _ADMIN_HEADER_RE.fullmatch(self.admin_header):
            raise ValueError(f"admin header {self.admin_header!r}: use lowercase letters, digits and '-'")
        if not _ADMIN_KEY_RE.fullmatch(self.admin_key):
            raise ValueError("admin key: use at least 16 characters from A-Z a-z 0-9 . _ ~ -")

    def _extra_has(self, flag: str) -> bool:
        return any(a == flag or a.startswith(flag + "=") for a in self.extra_args)

    def to_args(self) -> list[str]:
        """tritonserver's arguments (without the binary)."""
        if self.backend_directory is None:
            raise ValueError("backend_directory is not set")
        args = [
            f"--model-repository={self.repository}",
            f"--backend-directory={self.backend_directory}",
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
            args.append(f"--exit-timeout-secs={self.exit_timeout}")
        # An operator who passes their own restriction flags owns the whole policy.
        if self.restricted_apis and not (self._extra_has("--http-restricted-api") or self._extra_has("--grpc-restricted-protocol")):
            rule = f"{','.join(self.restricted_apis)}:{self.admin_header}={self.admin_key}"
            args += [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
        if shm_prefix_in(self.extra_args) is None:
            args.append(f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}")
        return args + list(self.extra_args)

    def expected_ports(self) -> set[int]:
        """The ports the server listens on once ready (gRPC and metrics can be switched off)."""
        ports = {self.http_port}
        disabled = {a.split("=", 1)[0] for a in self.extra_args if a.lower().endswith(("=false", "=0"))}
        if "--allow-grpc" not in disabled:
            ports.add(self.grpc_port)
        if "--allow-metrics" not in disabled:
            ports.add(self.metrics_port)
        return ports

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

    def admin_headers(self, protocol: str = "http") -> dict[str, str]:
        """Headers that open the restricted APIs: pass as ``headers=`` to tritonclient calls."""
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        name = self.admin_header if protocol == "http" else GRPC_RESTRICTED_PREFIX + self.admin_header
        return {name: self.admin_key}
