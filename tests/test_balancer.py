"""The fleet's HAProxy configuration, written from data: HAProxy accepts it, every server is health
checked on /v2/health/ready, gRPC speaks HTTP/2 to the servers, and every admin API is refused."""

from __future__ import annotations

import subprocess

import pytest

from benchmarks.fleet import haproxy_binary
from export.deploy.balancer import (
    ADMIN_GRPC_METHODS,
    ADMIN_HTTP_PREFIXES,
    BalancerConfig,
    Discovery,
    HealthCheck,
    Upstream,
    haproxy_config,
)
from export.launcher.config import RESTRICTED_APIS

UPSTREAMS = [Upstream("server0", "127.0.0.1", 9000, 9001), Upstream("server1", "127.0.0.1", 9010, 9011)]


def haproxy_accepts(text: str, tmp_path) -> subprocess.CompletedProcess:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    return subprocess.run([haproxy_binary(), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "config",
    [
        BalancerConfig("127.0.0.1", 18000, 18001, upstreams=UPSTREAMS, stats_socket="/tmp/x.sock"),
        BalancerConfig("0.0.0.0", 8000, 8001, discovery=Discovery("pods.ns.svc.cluster.local", 8000, 8001, slots=8)),
    ],
    ids=["listed", "dns"],
)
def test_haproxy_accepts_the_written_configuration(config, tmp_path):
    done = haproxy_accepts(haproxy_config(config), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_haproxy_rejects_a_broken_configuration(tmp_path):
    # The check above can fail: a server line without an address is refused.
    text = haproxy_config(BalancerConfig("127.0.0.1", 18000, 18001, upstreams=UPSTREAMS)).replace("127.0.0.1:9000", "")
    assert haproxy_accepts(text, tmp_path).returncode != 0


def test_every_server_is_checked_on_its_http_ready_endpoint_in_both_backends():
    health = HealthCheck(interval_ms=250, fall=3, rise=1)
    text = haproxy_config(BalancerConfig("127.0.0.1", 18000, 18001, upstreams=UPSTREAMS, health=health))
    http, grpc = text.split("\nbackend triton_http\n")[1].split("\nbackend triton_grpc\n")
    for backend in (http, grpc):
        assert "option httpchk GET /v2/health/ready" in backend and "http-check expect status 200" in backend
    for u in UPSTREAMS:
        assert f"server {u.name} {u.host}:{u.http_port} check inter 250ms fall 3 rise 1" in http
        # gRPC traffic is HTTP/2 to the gRPC port; its check is HTTP/1.1 to the same server's HTTP port.
        assert f"server {u.name} {u.host}:{u.grpc_port} proto h2 check inter 250ms fall 3 rise 1 port {u.http_port} check-proto h1" in grpc
    assert "bind 127.0.0.1:18001 proto h2" in text


def test_every_restricted_api_of_the_launcher_is_refused_over_http_and_grpc():
    assert set(RESTRICTED_APIS) <= set(ADMIN_HTTP_PREFIXES) and set(RESTRICTED_APIS) <= set(ADMIN_GRPC_METHODS)
    text = haproxy_config(BalancerConfig("127.0.0.1", 18000, 18001, upstreams=UPSTREAMS))
    for api in RESTRICTED_APIS:
        for prefix in ADMIN_HTTP_PREFIXES[api]:
            assert prefix in text
        for method in ADMIN_GRPC_METHODS[api]:
            assert f"/inference.GRPCInferenceService/{method}" in text
    open_config = haproxy_config(BalancerConfig("127.0.0.1", 18000, 18001, upstreams=UPSTREAMS, deny_admin=False))
    assert "deny" not in open_config


def test_a_balancer_needs_servers_listed_or_discovered_not_both():
    with pytest.raises(ValueError):
        BalancerConfig("127.0.0.1", 1, 2)
    with pytest.raises(ValueError):
        BalancerConfig("127.0.0.1", 1, 2, upstreams=UPSTREAMS, discovery=Discovery("x", 1, 2, 1))
