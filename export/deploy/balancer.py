"""HAProxy in front of several Triton servers, its configuration written from data.

One frontend per protocol (HTTP/1.1 and gRPC over cleartext HTTP/2), each with a backend of every
server's port for that protocol. A server is in rotation while its ``/v2/health/ready`` answers 200
(checked on its HTTP port, also for the gRPC backend): a dead or restarting server is taken out
after ``fall`` failed checks and put back after ``rise`` good ones. Requests go to the server with
the fewest open requests (``leastconn``): an image costs a student pass or a student and a teacher
pass, so round-robin would queue behind the slow ones.

A request that a server dropped without answering (killed mid-request, connection refused) is sent
once more to another server (``retry-on conn-failure empty-response``): an inference request is a
pure function of its inputs (the seed fixes the noise), so a second try returns what the first would
have. Timeouts are not retried: a slow server still answers, and a retry would double its work.

The admin APIs (``RESTRICTED_APIS`` of the launcher: model repository, shared memory, trace,
logging) are refused at the balancer, so they stay reachable only from inside the fleet, with the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from export.launcher.config import RESTRICTED_APIS

READY_PATH = "/v2/health/ready"
GRPC_SERVICE = "/inference.GRPCInferenceService/"

# Each restricted API of the launcher as the balancer sees it: HTTP path prefixes (or patterns under
# /v2/models/) and gRPC methods. Keyed by the launcher's names; a test checks none is missing.
ADMIN_HTTP_PREFIXES: dict[str, tuple[str, ...]] = {
    "model-repository": ("/v2/repository",),
    "shared-memory": ("/v2/systemsharedmemory", "/v2/cudasharedmemory"),
    "trace": ("/v2/trace",),
    "logging": ("/v2/logging",),
}
ADMIN_HTTP_MODEL_PATTERNS: dict[str, tuple[str, ...]] = {
    "model-repository": (),
    "shared-memory": (),
    "trace": (r"^/v2/models/[^/]+(/versions/[^/]+)?/trace/",),
    "logging": (),
}
ADMIN_GRPC_METHODS: dict[str, tuple[str, ...]] = {
    "model-repository": ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"),
    "shared-memory": (
        "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
        "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
    ),  # fmt: skip
    "trace": ("TraceSetting",),
    "logging": ("LogSettings",),
}


@dataclass(frozen=True)
class Upstream:
    """One Triton server: where its HTTP and gRPC ports are (health is checked on HTTP)."""

    name: str
    host: str
    http_port: int
    grpc_port: int


@dataclass(frozen=True)
class HealthCheck:
    """How fast a dead server leaves the rotation: after ``fall`` failed checks ``interval_ms`` apart."""

    interval_ms: int = 500
    fall: int = 2
    rise: int = 2
    timeout_ms: int = 1000


@dataclass(frozen=True)
class Discovery:
    """Servers found by DNS instead of listed: ``slots`` entries for a headless Service's name, re-resolved
    every ``hold_s`` seconds (Kubernetes: the pods behind ``<service>.<namespace>.svc.cluster.local``)."""

    service_fqdn: str
    http_port: int
    grpc_port: int
    slots: int
    hold_s: int = 5


@dataclass(frozen=True)
class BalancerConfig:
    bind_host: str
    http_port: int
    grpc_port: int
    upstreams: Sequence[Upstream] = ()
    discovery: Discovery | None = None
    health: HealthCheck = field(default_factory=HealthCheck)
    stats_socket: str | None = None
    # A whole image can take minutes on a loaded CPU; the server's own queue bounds it, not the proxy.
    request_timeout_s: int = 600
    retries: int = 1
    # Re-send a request a server dropped (killed mid-request) to another server; off, HAProxy retries
    # only connections that never opened, and a client sees the dropped request fail.
    retry_dropped: bool = True
    deny_admin: bool = True
    max_connections: int = 4096

    def __post_init__(self) -> None:
        if bool(self.upstreams) == (self.discovery is not None):
            raise ValueError("give either upstreams or discovery")
        missing = set(RESTRICTED_APIS) - set(ADMIN_HTTP_PREFIXES) - set(ADMIN_GRPC_METHODS)
        if missing:
            raise ValueError(f"no balancer rule for the restricted APIs {sorted(missing)}")


def _admin_rules(deny: bool) -> tuple[list[str], list[str]]:
    if not deny:
        return [], []
    prefixes = [p for api in RESTRICTED_APIS for p in ADMIN_HTTP_PREFIXES[api]]
    patterns = [p for api in RESTRICTED_APIS for p in ADMIN_HTTP_MODEL_PATTERNS[api]]
    methods = [GRPC_SERVICE + m for api in RESTRICTED_APIS for m in ADMIN_GRPC_METHODS[api]]
    http = ["acl admin_api path_beg " + " ".join(prefixes)]
    if patterns:
        http.append("acl admin_api path_reg " + " ".join(patterns))
    http.append("http-request deny deny_status 403 if admin_api")
    grpc = ["acl admin_rpc path " + " ".join(methods), "http-request deny deny_status 403 if admin_rpc"]
    return http, grpc


def _servers(config: BalancerConfig, grpc: bool) -> list[str]:
    h = config.health
    check = f"check inter {h.interval_ms}ms fall {h.fall} rise {h.rise}"
    if grpc:
        # Traffic speaks HTTP/2 to the gRPC port; the check speaks HTTP/1.1 to the HTTP port.
        check = "proto h2 " + check
    if config.discovery is not None:
        d = config.discovery
        port = d.grpc_port if grpc else d.http_port
        extra = f" port {d.http_port} check-proto h1" if grpc else ""
        return [f"server-template pod 1-{d.slots} {d.service_fqdn}:{port} {check}{extra} resolvers cluster init-addr none"]
    lines = []
    for u in config.upstreams:
        port = u.grpc_port if grpc else u.http_port
        extra = f" port {u.http_port} check-proto h1" if grpc else ""
        lines.append(f"server {u.name} {u.host}:{port} {check}{extra}")
    return lines


def haproxy_config(config: BalancerConfig) -> str:
    """The haproxy.cfg text for ``config`` (``haproxy -c -f`` accepts it)."""
    h = config.health
    http_admin, grpc_admin = _admin_rules(config.deny_admin)
    out = ["global", f"    maxconn {config.max_connections}"]
    if config.stats_socket:
        out.append(f"    stats socket {config.stats_socket} mode 600 level admin")
    out += [
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        f"    timeout client {config.request_timeout_s}s",
        f"    timeout server {config.request_timeout_s}s",
        f"    timeout check {h.timeout_ms}ms",
        "    option redispatch",
        f"    retries {config.retries}",
    ]
    if config.retry_dropped:
        out.append("    retry-on conn-failure empty-response")
    if config.discovery is not None:
        d = config.discovery
        # The pod's own resolver (/etc/resolv.conf points at the cluster DNS).
        out += ["", "resolvers cluster", "    parse-resolv-conf", f"    hold valid {d.hold_s}s", "    accepted_payload_size 8192"]
    out += [
        "",
        "frontend http_in",
        f"    bind {config.bind_host}:{config.http_port}",
        *("    " + r for r in http_admin),
        "    default_backend triton_http",
        "",
        "frontend grpc_in",
        f"    bind {config.bind_host}:{config.grpc_port} proto h2",
        *("    " + r for r in grpc_admin),
        "    default_backend triton_grpc",
    ]
    for name, grpc in (("triton_http", False), ("triton_grpc", True)):
        out += [
            "",
            f"backend {name}",
            "    balance leastconn",
            f"    option httpchk GET {READY_PATH}",
            "    http-check expect status 200",
            *("    " + s for s in _servers(config, grpc)),
        ]
    return "\n".join(out) + "\n"
