"""The served pipeline under concurrency: requests overlap, share UNet calls, and no row notices.

The BLS runs every request in an execution of its own, on several BLS instances, and the component
models' dynamic batchers merge the calls that meet in their queues: rows of different requests, at
different steps, in one UNet execution. These tests specify what a client must see: the image a
request gets alone, bit for bit; an early answer for work that is done early; and Triton's own
statistics showing executions that held rows of several requests.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from bll_python.contract import RESPONSE_FIELDS
from bll_python.settings import GenerationSettings
from clients.client import AdaptiveClient, build_inputs
from tests.mixed_requests import CASES

pytestmark = pytest.mark.server
MODEL = "adaptive_diffusion"


@pytest.fixture(scope="module")
def alone(ort_pipeline):
    """Each case generated alone, in-process."""
    return [ort_pipeline([p], [seed], GenerationSettings.from_mapping(f, ort_pipeline.deployment.defaults)) for p, seed, f in CASES]


def _generate(url: str, case) -> object:
    prompt, seed, fields = case
    with AdaptiveClient(url, "grpc") as client:
        return client.generate([prompt], [seed], **fields)[0]


def _batch_executions(url: str, model: str) -> dict[int, int]:
    """Triton's executions of ``model`` by batch size (rows per execution)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    finally:
        client.close()
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def test_concurrent_requests_of_every_strategy_get_the_image_they_get_alone_bit_for_bit(tiny_server, alone):
    with ThreadPoolExecutor(len(CASES)) as pool:
        got = list(pool.map(lambda c: _generate(tiny_server.grpc_url, c), CASES * 2))
    for i, g in enumerate(got):
        a = alone[i % len(CASES)]
        assert g.route == a.routes[0].value
        assert g.unet_steps == int(a.unet_steps[0])
        assert np.array_equal(g.image, a.images[0]), f"{CASES[i % len(CASES)][0]}: differs from the image generated alone"


def test_unet_executions_hold_rows_of_several_requests(tiny_server):
    # Single-row requests with classifier-free guidance put two rows into every UNet call, so an
    # execution of more than two rows merged calls of different requests. Sixteen clients keep more
    # BLS calls in flight than there are UNet instances, so calls meet in the queue.
    url = tiny_server.grpc_url
    before = {m: _batch_executions(url, m) for m in ("unet_student", "unet_teacher")}
    cases = [(f"a painting of the number {i}", i, dict(strategy="refine", tau=1e6, teacher_steps=6)) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda c: _generate(url, c), cases))
    for model in ("unet_student", "unet_teacher"):
        after = _batch_executions(url, model)
        merged = {size: n - before[model].get(size, 0) for size, n in after.items() if size > 2 and n > before[model].get(size, 0)}
        assert merged, f"{model}: every execution held the rows of one request ({after})"


def test_a_student_request_is_answered_while_a_long_teacher_request_is_still_running(tiny_server):
    url = tiny_server.grpc_url
    client = grpcclient.InferenceServerClient(url)
    done = threading.Event()
    box: dict = {}

    def callback(result, error) -> None:
        box["error"] = error
        done.set()

    outputs = [grpcclient.InferRequestedOutput(f.name) for f in RESPONSE_FIELDS]
    long_request = build_inputs(grpcclient, ["a long teacher request"], [1], strategy="teacher_only", teacher_steps=100)
    try:
        client.async_infer(MODEL, long_request, callback=callback, outputs=outputs)
        quick = _generate(url, ("a quick student request", 2, dict(strategy="student_only", student_steps=2)))
        assert quick.route == "student"
        assert not done.is_set(), "the student request waited for the teacher request to finish"
        assert done.wait(120) and box["error"] is None
    finally:
        client.close()


def test_cancelling_one_request_leaves_its_concurrent_neighbours_unchanged(tiny_server, alone):
    url = tiny_server.grpc_url
    client = grpcclient.InferenceServerClient(url)
    cancelled = threading.Event()
    box: dict = {}

    def callback(result, error) -> None:
        box["error"] = error
        cancelled.set()

    outputs = [grpcclient.InferRequestedOutput(f.name) for f in RESPONSE_FIELDS]
    victim = build_inputs(grpcclient, ["the victim"], [7], strategy="teacher_only", teacher_steps=100)
    try:
        ctx = client.async_infer(MODEL, victim, callback=callback, outputs=outputs)
        with ThreadPoolExecutor(len(CASES)) as pool:
            futures = [pool.submit(_generate, url, c) for c in CASES]
            futures[0].result()  # the neighbours are under way
            ctx.cancel()
            got = [f.result() for f in futures]
        assert cancelled.wait(60) and "CANCELLED" in str(box["error"].status())
    finally:
        client.close()
    for g, a in zip(got, alone):
        assert np.array_equal(g.image, a.images[0])
