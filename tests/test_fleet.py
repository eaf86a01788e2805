"""A fleet on this machine, for real: two tiny servers behind HAProxy (the configuration the cluster's
balancer gets, from the same generator). Kill one mid-run: the balancer's health checks take it out,
no request started after that fails, and the ones that failed were in flight at the kill. The
dashboard's and the autoscaler's queries name only metrics a live server exports.

Short on purpose (a few dozen tiny images); ``python -m benchmarks.failover`` is the measurement.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient

from benchmarks.failover import measure_failover, send_load
from benchmarks.fleet import LocalFleet, fleet_repository
from benchmarks.workload import TEST_PROMPTS, Workload
from export.deploy.balancer import HealthCheck
from export.deploy.monitoring import metric_names, queries

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def fleet(tiny_repository, tmp_path_factory):
    from tests.triton_fixtures import assert_serves_tree_under_test

    repository = fleet_repository(tiny_repository, tmp_path_factory.mktemp("fleet") / "repository")
    assert_serves_tree_under_test(repository)
    with LocalFleet(repository, servers=2, health=HealthCheck(interval_ms=250, fall=2, rise=1), log_dir=tmp_path_factory.mktemp("fleet_logs")) as f:
        yield f


def scrape(url: str) -> set[str]:
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)", text, re.M)}


def test_requests_through_the_balancer_reach_every_server_over_grpc_and_http(fleet):
    workload = Workload.from_file(TEST_PROMPTS, 8)
    for protocol, url in (("grpc", fleet.grpc_url), ("http", fleet.http_url)):
        outcomes = send_load(url, protocol, workload, concurrency=2, requests=4)
        assert [o.error for o in outcomes if not o.ok] == [] and len(outcomes) == 4
    served = []
    for s in fleet.servers:
        with grpcclient.InferenceServerClient(s.grpc_url) as c:
            served.append(c.get_inference_statistics("adaptive_diffusion").model_stats[0].inference_count)
    assert sum(served) == 8 and all(n > 0 for n in served), f"requests per server: {served}"


def test_the_balancer_refuses_the_admin_apis_and_passes_health(fleet):
    with urllib.request.urlopen(f"http://{fleet.http_url}/v2/health/ready", timeout=10) as resp:
        assert resp.status == 200
    req = urllib.request.Request(f"http://{fleet.http_url}/v2/repository/index", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 403 and b"Forbidden" in refused.value.read()  # HAProxy's page, not Triton's
    with grpcclient.InferenceServerClient(fleet.grpc_url) as c:
        assert c.is_server_ready()
        # HAProxy's 403, not Triton's own refusal of a call without the key (UNAVAILABLE, "restricted").
        with pytest.raises(Exception, match="403") as refused_rpc:
            c.get_model_repository_index()
        assert "restricted" not in str(refused_rpc.value)


def test_every_metric_the_dashboard_and_autoscaler_read_is_exported(fleet):
    exported = scrape(fleet.servers[0].metrics_url)
    used = set().union(*(metric_names(q) for q in queries()))
    assert {"nv_inference_pending_request_count", "adaptive_accepted_rows_total", "adaptive_stage_seconds_bucket", "nv_inference_request_summary_us"} <= used
    assert sorted(used - exported) == []


def test_metric_names_are_read_out_of_promql():
    expr = 'histogram_quantile(0.99, sum by (le, stage) (rate(adaptive_stage_seconds_bucket{model="x"}[2m]))) / clamp_min(foo_total, 1e-9)'
    assert metric_names(expr) == {"adaptive_stage_seconds_bucket", "foo_total"}
    assert metric_names("rate(x_us[2m]) / 1e6 / clamp_min(y, 1.5e-9) * 2") == {"x_us", "y"}
    assert metric_names("avg_over_time(<<.Series>>{<<.LabelMatchers>>}[1m])") == set()


def test_killing_a_server_mid_run_takes_it_out_and_later_requests_succeed(fleet):
    # Runs last in this module: it leaves one server dead (then restarts it, which it times).
    result = measure_failover(fleet, protocol="grpc", concurrency=3, requests=18, kill_after=4, restart=True)
    assert result.requests == 18
    assert result.failed_after_down == 0, result.errors
    assert result.failed <= result.notes["in_flight_at_kill"], result.errors
    assert result.after["requests"] >= 1  # requests sent after the balancer's DOWN went to the survivor and succeeded
    assert 0 < result.detected_s < 30
    assert result.rejoin_s is not None and result.rejoin_s > 0
    print(f"failover: {result.as_dict()}")
