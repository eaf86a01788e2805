"""No single request takes the server down (issue 16), against a real tritonserver 2.51.

One launcher runs as an operator runs it (``python -m export.launcher --gateway-port ...``, a child
process on free ports) over a copy of the tiny repository whose BLS has 2 instances and an admission
queue of 2, so overload is cheap to reach:

- through the gateway, every hostile request of tests/attack_probes.py is refused with a clear
  status before Triton sees it, and the server keeps serving;
- overload is answered UNAVAILABLE at once, and every execution still holds one request;
- the requests that crash Triton 2.51 itself, sent past the gateway, are survived: the launcher
  restarts the server, says why in the ``adaptive_launcher_restarts`` gauge, and a client that
  retries gets its image.
"""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bll_python.layout import BLS_MODEL
from clients.client import AdaptiveClient, build_inputs
from clients.ports import free_ports
from clients.server_process import ServerProcess
from export.triton.configs import bls_config, write_config
from tests.attack_probes import INFER, Probe, big_body, component_infer, huge_shape, nested_json, send
from tests.triton_fixtures import assert_serves_tree_under_test

BLS_INSTANCES, QUEUE = 2, 2
GOOD_BODY = (
    b'{"inputs":[{"name":"prompt","datatype":"BYTES","shape":[1,1],"data":["a [red] {fox}"]},'
    b'{"name":"student_steps","datatype":"INT32","shape":[1,1],"data":[1]},'
    b'{"name":"strategy","datatype":"BYTES","shape":[1,1],"data":["student_only"]}],'
    b'"outputs":[{"name":"route"}]}'
)


@pytest.fixture(scope="module")
def guarded(tiny_repository, deployment, tmp_path_factory):
    repo = tmp_path_factory.mktemp("guarded") / "repository"
    shutil.copytree(tiny_repository, repo)
    write_config(repo, bls_config(deployment, instances=BLS_INSTANCES, max_queue_size=QUEUE))
    assert_serves_tree_under_test(repo)
    gateway_port = free_ports(1)[0]
    server = ServerProcess(
        repo,
        ready_timeout=300,
        log=tmp_path_factory.mktemp("logs") / "launcher.log",
        launcher_args=["--gateway-port", str(gateway_port), "--restart-backoff", "0.5"],
    )
    with server:
        server.gateway_url = f"127.0.0.1:{gateway_port}"
        yield server


def _metrics(server) -> str:
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as resp:
        return resp.read().decode()


def _stats(url: str) -> dict:
    client = grpcclient.InferenceServerClient(url)
    try:
        return client.get_inference_statistics(BLS_MODEL, as_json=True)["model_stats"][0]
    finally:
        client.close()


GATEWAY_REFUSES = [
    (huge_shape(), 400, "shape dimension"),
    (nested_json(), 400, "nested deeper than"),
    (nested_json(9), 400, "nested deeper than"),
    (big_body(1), 413, "request body over"),
    (component_infer("unet_teacher"), 404, "not found"),
    (component_infer("text_encoder"), 404, "not found"),
    (Probe("repository index", "POST", "/v2/repository/index"), 404, "not found"),
    (Probe("model load", "POST", "/v2/repository/models/unet_teacher/load"), 404, "not found"),
    (Probe("log settings", "POST", "/v2/logging", b"{}"), 404, "not found"),
    (Probe("component statistics", "GET", "/v2/models/unet_teacher/stats"), 404, "not found"),
    (Probe("component config", "GET", "/v2/models/unet_teacher/config"), 404, "not found"),
    (Probe("path traversal", "POST", "/v2/models/adaptive_diffusion/../unet_teacher/infer", GOOD_BODY), 404, "not found"),
    (Probe("escaped key", "POST", INFER, b'{"inputs":[{"name":"seed","datatype":"INT64","\\u0073hape":[1,99999999999],"data":[1]}]}'), 400, "escapes"),
    (Probe("chunked body", "POST", INFER, GOOD_BODY, (("Transfer-Encoding", "chunked"),)), 411, "Content-Length"),
]


@pytest.mark.server
@pytest.mark.parametrize("probe, status, fragment", GATEWAY_REFUSES, ids=[p.name for p, _, _ in GATEWAY_REFUSES])
def test_the_gateway_refuses_every_hostile_request_before_triton_and_the_server_stays_up(guarded, probe, status, fragment):
    pid = guarded.pid
    got, body = send(guarded.gateway_url, probe)
    assert got == status and fragment in body.decode(errors="replace"), (got, body[:200])
    assert guarded.pid == pid, "tritonserver was replaced"


@pytest.mark.server
def test_the_gateway_passes_inference_health_and_metadata_of_the_served_model(guarded):
    status, body = send(guarded.gateway_url, Probe("good", "POST", INFER, GOOD_BODY), timeout=300)
    assert status == 200 and b'"student"' in body, body[:300]
    for path in ("/v2/health/ready", "/v2/health/live", f"/v2/models/{BLS_MODEL}", f"/v2/models/{BLS_MODEL}/ready", "/v2"):
        assert send(guarded.gateway_url, Probe(path, "GET", path))[0] == 200, path


@pytest.mark.server
def test_overload_is_answered_unavailable_at_once_and_each_execution_holds_one_request(guarded):
    before = _stats(guarded.grpc_url)
    results: list[tuple[str, float, int]] = []
    lock = threading.Lock()

    def long_request(i: int) -> None:
        rows = 1 + i % 3  # multi-row requests too: the batcher must not merge them
        client = grpcclient.InferenceServerClient(guarded.grpc_url)
        start = time.monotonic()
        try:
            client.infer(BLS_MODEL, build_inputs(grpcclient, [f"prompt {i}"] * rows, list(range(rows)), strategy="teacher_only", teacher_steps=30))
            outcome = "ok"
        except InferenceServerException as e:
            outcome = f"{e.status()}: {e.message()}"
        finally:
            client.close()
        with lock:
            results.append((outcome, time.monotonic() - start, rows))

    # More than the instances and the queue hold; started one by one, so the queue is full before the last.
    threads = [threading.Thread(target=long_request, args=(i,)) for i in range(BLS_INSTANCES + QUEUE + 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    refused = [r for r in results if r[0] != "ok"]
    served = [r for r in results if r[0] == "ok"]
    assert len(refused) >= 1 and len(served) >= BLS_INSTANCES + QUEUE and len(results) == len(threads), results
    for outcome, seconds, _ in refused:
        assert outcome.startswith("StatusCode.UNAVAILABLE") and "Exceeds maximum queue size" in outcome, outcome
    # Refused at once: before any of the admitted requests was answered.
    assert max(s for _, s, _ in refused) < min(s for _, s, _ in served), results
    after = _stats(guarded.grpc_url)
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    rows = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    assert executions == len(served), "an execution held more than one request"
    assert rows == sum(r for _, _, r in served)


@pytest.mark.server
@pytest.mark.parametrize("probe, reason", [(huge_shape(), "SIGABRT"), (nested_json(), "SIGSEGV")], ids=["huge shape", "nested JSON"])
def test_a_request_that_crashes_triton_directly_is_survived_by_supervision_and_a_retrying_client(guarded, probe, reason):
    # Past the gateway, on Triton's own port: Triton 2.51 dies of it; the launcher brings it back.
    pid = guarded.pid
    series = f'adaptive_launcher_restarts{{reason="{reason}"}}'
    restarts = next(float(line.split()[-1]) for line in _metrics(guarded).splitlines() if line.startswith(series))
    start = time.monotonic()
    status, _ = send(guarded.http_url, probe)
    assert status == 0, "the server answered instead of crashing: the probe no longer crashes this Triton"
    with AdaptiveClient(guarded.grpc_url, protocol="grpc", retry_s=600) as client:
        (image,) = client.generate(["a lighthouse"], [1], strategy="student_only", student_steps=1)
    recovered = time.monotonic() - start
    assert image.route == "student" and image.image.dtype == np.uint8
    assert guarded.pid not in (None, pid), "tritonserver was not replaced"
    print(f"{probe.name}: crash to a served image {recovered:.1f}s")
    after = next(float(line.split()[-1]) for line in _metrics(guarded).splitlines() if line.startswith(series))
    assert after == restarts + 1
    assert guarded.is_alive()
