"""The served pipeline reproduces the in-process pipeline, over HTTP and gRPC, under concurrency.

All tests share one real tritonserver (the ``tiny_server`` session fixture) on the tiny repository.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bll_python.settings import GenerationSettings, Route
from clients.client import AdaptiveClient

pytestmark = pytest.mark.server

PROMPTS = ["a red fox in the snow", "an old lighthouse at dusk, oil painting", "a bowl of ramen", "two cats on a sofa", "a koi pond", "a knight in armor"]
SEEDS = [3, 1, 4, 1, 5, 9]
SETTINGS = dict(guidance_scale=7.5, student_steps=3, teacher_steps=4, sigma=0.7, strategy="refine")


def _url(server, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


def _teacher_stats(server) -> tuple[int, int]:
    """(inference_count, execution_count) of unet_teacher, from Triton's own statistics."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    stats = client.get_inference_statistics("unet_teacher", as_json=True)["model_stats"][0]
    client.close()
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


@pytest.fixture(scope="module")
def tau(ort_pipeline) -> float:
    """A cut-off with rows on both sides, so both routes are exercised."""
    scores = ort_pipeline(PROMPTS, SEEDS, GenerationSettings(**{**SETTINGS, "strategy": "student_only"})).scores
    return float(np.median(scores))


@pytest.fixture(scope="module")
def expected(ort_pipeline, tau):
    return ort_pipeline(PROMPTS, SEEDS, GenerationSettings(**SETTINGS, tau=tau))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_images_equal_the_inprocess_pipeline_within_one_lsb(tiny_server, expected, tau, protocol):
    with AdaptiveClient(_url(tiny_server, protocol), protocol) as client:
        got = client.generate(PROMPTS, SEEDS, tau=tau, **SETTINGS)
    assert [g.route for g in got] == [r.value for r in expected.routes]
    assert {g.route for g in got} == {"student", "refined"}
    assert [g.unet_steps for g in got] == expected.unet_steps.tolist()
    np.testing.assert_allclose([g.score for g in got], expected.scores, atol=1e-5)
    diff = max(int(np.abs(g.image.astype(int) - expected.images[i].astype(int)).max()) for i, g in enumerate(got))
    assert diff <= 1, f"served image differs from in-process by {diff} LSB"
    assert got[0].image.shape == expected.images[0].shape and got[0].image.dtype == np.uint8


def test_only_rejected_rows_reach_unet_teacher_per_tritons_statistics(tiny_server, expected, tau):
    before = _teacher_stats(tiny_server)
    with AdaptiveClient(tiny_server.grpc_url, "grpc") as client:
        got = client.generate(PROMPTS, SEEDS, tau=tau, **SETTINGS)
    after = _teacher_stats(tiny_server)
    rejected = sum(g.route == Route.REFINED.value for g in got)
    assert 0 < rejected < len(PROMPTS)
    # Every teacher step runs the rejected rows once, doubled for classifier-free guidance.
    assert after[0] - before[0] == 2 * rejected * SETTINGS["teacher_steps"]
    assert after[1] - before[1] == SETTINGS["teacher_steps"]


def test_student_only_requests_never_reach_the_teacher(tiny_server):
    before = _teacher_stats(tiny_server)
    with AdaptiveClient(tiny_server.http_url, "http") as client:
        got = client.generate(PROMPTS[:3], SEEDS[:3], **{**SETTINGS, "strategy": "student_only"})
    assert [g.route for g in got] == ["student"] * 3
    assert _teacher_stats(tiny_server) == before


def test_eight_concurrent_clients_each_get_their_own_image(tiny_server, ort_pipeline, tau):
    prompts = [f"{p}, variant {i}" for i, p in enumerate(PROMPTS + PROMPTS[:2])]
    seeds = list(range(100, 108))

    def one(i: int):
        protocol = "grpc" if i % 2 else "http"
        with AdaptiveClient(_url(tiny_server, protocol), protocol) as client:
            return client.generate([prompts[i]], [seeds[i]], tau=tau, **SETTINGS)[0]

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(8)))
    for i, g in enumerate(got):
        alone = ort_pipeline([prompts[i]], [seeds[i]], GenerationSettings(**SETTINGS, tau=tau))
        assert g.prompt == prompts[i] and g.route == alone.routes[0].value
        assert int(np.abs(g.image.astype(int) - alone.images[0].astype(int)).max()) <= 1, f"client {i} got another image"


def test_a_bad_request_gets_invalid_arg_and_its_batch_neighbours_still_succeed(tiny_server, ort_pipeline, tau):
    good_settings = dict(SETTINGS, tau=tau)

    def good(i: int):
        with AdaptiveClient(tiny_server.grpc_url, "grpc") as client:
            return client.generate([PROMPTS[i]], [SEEDS[i]], **good_settings)[0]

    def bad(_: int):
        with AdaptiveClient(tiny_server.grpc_url, "grpc") as client:
            try:
                client.generate([PROMPTS[0]], [SEEDS[0]], **{**good_settings, "sigma": 1.5})
            except InferenceServerException as e:
                return e
        return None

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(good, 0), pool.submit(bad, 0), pool.submit(good, 1), pool.submit(bad, 0)]
        results = [f.result() for f in futures]
    for err in (results[1], results[3]):
        assert isinstance(err, InferenceServerException)
        assert "INVALID_ARG" in str(err.status()) or "InvalidArg" in str(err.status())
        assert "sigma" in err.message() and "(0, 1]" in err.message()
    for i, g in ((0, results[0]), (1, results[2])):
        alone = ort_pipeline([PROMPTS[i]], [SEEDS[i]], GenerationSettings(**good_settings))
        assert int(np.abs(g.image.astype(int) - alone.images[0].astype(int)).max()) <= 1
    assert grpcclient.InferenceServerClient(tiny_server.grpc_url).is_server_live()


def test_perf_analyzer_runs_against_adaptive_diffusion_with_zero_errors(tiny_server, tmp_path):
    from benchmarks.perf_analyzer import perf_analyzer_command, perf_analyzer_env

    data = {"data": [{"prompt": {"content": [p], "shape": [1]}, "seed": {"content": [s], "shape": [1]}, "student_steps": {"content": [2], "shape": [1]}, "teacher_steps": {"content": [2], "shape": [1]}} for p, s in zip(PROMPTS, SEEDS)]}
    (tmp_path / "input.json").write_text(json.dumps(data))
    csv = tmp_path / "perf.csv"
    cmd = perf_analyzer_command() + [
        "-m", "adaptive_diffusion", "-u", tiny_server.grpc_url, "-i", "grpc",
        "--input-data", str(tmp_path / "input.json"), "--concurrency-range", "2:2",
        "--measurement-mode", "count_windows", "--measurement-request-count", "8", "-f", str(csv),
        # This checks errors, not speed: on a shared 2-core machine latency never "stabilises".
        "--stability-percentage", "1000", "--max-trials", "5",
    ]  # fmt: skip
    run = subprocess.run(cmd, env=perf_analyzer_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Throughput" in run.stdout
    client = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    stats = client.get_inference_statistics("adaptive_diffusion", as_json=True)["model_stats"][0]["inference_stats"]
    assert int(stats.get("fail", {}).get("count", 0)) == 0
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("Concurrency") and float(rows[1].split(",")[1]) > 0
