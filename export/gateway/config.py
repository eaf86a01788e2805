"""The gateway's settings as data: where it listens, the servers behind it, and its limits.

``GatewayConfig.for_repository`` derives the limits from what the repository serves: the body cap
from the serving contract (rows x text fields x the prompt byte cap), the largest shape dimension
from the BLS's ``max_batch_size``, and each server's connection cap from its BLS instances plus its
admission queue, so the gateway never forwards more requests than a server admits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bll_python.contract import REQUEST_FIELDS
from bll_python.layout import BLS_MODEL, read_model_config
from bll_python.settings import MAX_TEXT_BYTES

DEFAULT_PORT = 8080
# JSON nesting of a valid request: {"inputs": [{"data": [[...]]}]} is 4 deep.
MAX_JSON_DEPTH = 8
# JSON may spell a UTF-8 byte as a 2-character escape ("\u00e9" for 2 bytes); more is refused.
JSON_EXPANSION = 2
BODY_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Upstream:
    host: str
    http_port: int
    max_connections: int  # inference requests in flight to it; more wait in the gateway's queue


@dataclass(frozen=True)
class GatewayConfig:
    upstreams: tuple[Upstream, ...]
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    model: str = BLS_MODEL
    max_body_bytes: int = 1 << 20
    max_json_depth: int = MAX_JSON_DEPTH
    max_dim: int = 8
    # Per client address: requests in any 10 s beyond this get 429.
    requests_per_10s: int = 200
    # How long a request may wait for a server connection before 503.
    queue_timeout_s: float = 1.0
    # A request's whole life (a 100-step teacher request on a busy CPU takes minutes).
    server_timeout_s: float = 600.0
    header_timeout_s: float = 10.0
    max_client_connections: int = 256
    extra_allowed_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ValueError("the gateway needs at least one upstream server")
        if self.max_body_bytes < 1024 or self.max_json_depth < 4 or self.max_dim < 1 or self.requests_per_10s < 1:
            raise ValueError(f"gateway limits out of range: {self}")

    @property
    def buffer_bytes(self) -> int:
        """HAProxy's tune.bufsize: the whole request (headers and the largest body) must fit, so the
        body checks see all of it."""
        return self.max_body_bytes + 32 * 1024

    @classmethod
    def for_repository(cls, repository: Path, servers: list[tuple[str, int]], **overrides: object) -> "GatewayConfig":
        """Limits derived from ``repository``'s BLS config and the serving contract."""
        bls = read_model_config(Path(repository), BLS_MODEL)
        text_fields = sum(1 for f in REQUEST_FIELDS if f.dtype == "bytes" and f.name != "strategy")
        body = bls.max_batch_size * text_fields * MAX_TEXT_BYTES * JSON_EXPANSION + BODY_OVERHEAD_BYTES
        instances = sum(g.count for g in bls.instance_group) or 1
        queue = bls.dynamic_batching.default_queue_policy.max_queue_size if bls.HasField("dynamic_batching") else 0
        upstreams = tuple(Upstream(host, port, instances + queue) for host, port in servers)
        settings = dict(upstreams=upstreams, max_body_bytes=body, max_dim=max(bls.max_batch_size, 1))
        settings.update(overrides)
        return cls(**settings)  # type: ignore[arg-type]
