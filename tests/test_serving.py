"""The served pipeline reproduces diffusers (and the in-process pipeline), over HTTP and gRPC, under concurrency.

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

from bll_python.settings import GenerationSettings
from clients.client import AdaptiveClient
from tests import gate

pytestmark = pytest.mark.server

PROMPTS, SEEDS = gate.PROMPTS, gate.SEEDS
SETTINGS = {k: v for k, v in gate.SETTINGS.as_dict().items() if v is not None}


def _url(server, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


def _teacher_stats(server) -> tuple[int, int]:
    """(inference_count, execution_count) of unet_teacher, from Triton's own statistics."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    stats = client.get_inference_statistics("unet_teacher", as_json=True)["model_stats"][0]
    client.close()
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


@pytest.fixture(scope="module")
def tau(mixed_batch) -> float:
    """Two of the six rows score below it, four above (tests/gate.py)."""
    return mixed_batch.tau


@pytest.fixture(scope="module")
def diffusers_mixed(mixed_batch, diffusers_reference) -> np.ndarray:
    """diffusers' uint8 images for the mixed batch: the student's for accepted rows, img2img's for rejected ones."""
    m, s = mixed_batch, mixed_batch.settings
    images = diffusers_reference.student(m.prompts, m.seeds, s).uint8
    refined = diffusers_reference.refine([m.prompts[i] for i in m.rejected], [m.seeds[i] for i in m.rejected], s).uint8
    images[m.rejected] = refined
    return images


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_served_mixed_batch_equals_diffusers_row_by_row_and_only_rejected_rows_reach_unet_teacher(tiny_server, mixed_batch, diffusers_mixed, protocol):
    m = mixed_batch
    before = _teacher_stats(tiny_server)
    with AdaptiveClient(_url(tiny_server, protocol), protocol) as client:
        got = client.generate(PROMPTS, SEEDS, tau=m.tau, **SETTINGS)
    after = _teacher_stats(tiny_server)
    with AdaptiveClient(_url(tiny_server, protocol), protocol) as client:
        student = client.generate(PROMPTS, SEEDS, **{**SETTINGS, "strategy": "student_only"})

    assert [g.route for g in got] == ["refined" if i in m.rejected else "student" for i in range(len(PROMPTS))]
    s = m.settings
    assert [g.unet_steps for g in got] == [s.student_steps + (s.teacher_steps if i in m.rejected else 0) for i in range(len(PROMPTS))]
    np.testing.assert_allclose([g.score for g in got], m.scores, atol=1e-5)
    for i in m.accepted:
        np.testing.assert_array_equal(got[i].image, student[i].image, err_msg=f"accepted row {i} is not the served student_only image")
    for i, g in enumerate(got):
        diff = int(np.abs(g.image.astype(int) - diffusers_mixed[i].astype(int)).max())
        assert diff <= 1, f"row {i} ({g.route}): served image differs from diffusers' by {diff} LSB"
    assert got[0].image.shape == diffusers_mixed[0].shape and got[0].image.dtype == np.uint8
    # Triton's own count: every teacher step ran the rejected rows once, doubled for CFG.
    assert after[0] - before[0] == 2 * len(m.rejected) * s.teacher_steps
    assert after[1] - before[1] == s.teacher_steps


def test_served_teacher_share_at_k_is_k_percent_of_the_calibration_prompts(tiny_server, deployment, calibration_prompts, calibration_scores):
    """The served gate at k=25 on the very prompts and seeds tau was calibrated on: 25 % go to the teacher."""
    from tests.test_calibration import percentile

    k = 25.0
    tau = percentile(calibration_scores, k)
    expected = [s < tau for s in calibration_scores]
    assert sum(expected) == round(k / 100 * len(calibration_scores)), "the recomputed scores put k % below the k-th percentile"
    student = {f: deployment.calibration.settings[f] for f in ("guidance_scale", "student_steps")}
    before = _teacher_stats(tiny_server)
    routes = []
    with AdaptiveClient(tiny_server.grpc_url, "grpc") as client:
        for i in range(0, len(calibration_prompts), deployment.max_rows):
            chunk = calibration_prompts[i : i + deployment.max_rows]
            got = client.generate(chunk, list(range(i, i + len(chunk))), k=k, strategy="refine", teacher_steps=1, **student)
            routes += [g.route for g in got]
    teacher_rows = _teacher_stats(tiny_server)[0] - before[0]
    assert [r == "refined" for r in routes] == expected
    share = routes.count("refined") / len(routes)
    assert abs(share - k / 100) <= 1 / len(routes), f"served teacher share {share:.0%} at k={k:g}"
    assert teacher_rows == 2 * routes.count("refined"), "Triton's unet_teacher saw other rows than the refined ones"


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
        assert "sigma" in err.message() and "[0.001, 1]" in err.message()
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
