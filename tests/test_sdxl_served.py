"""The SDXL family served by Triton reproduces diffusers' SDXL pipelines and the in-process pipeline.

One tritonserver on the tiny-xl repository (seven models: both text towers, two UNets taking the
added conditions, the VAE, ImageReward and the BLS). Served images are compared with
``StableDiffusionXLPipeline`` / ``StableDiffusionXLImg2ImgPipeline`` on the same weights and seeds
(within 1 of 255 levels, as for SD1.5 in tests/test_serving.py) and with the in-process ONNX Runtime
pipeline over the same graphs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from bll_python.settings import GenerationSettings
from clients.client import AdaptiveClient

pytestmark = pytest.mark.server

PROMPTS = ["a red fox in the snow", "an old lighthouse at dusk, oil painting", "a bowl of ramen"]
SEEDS = [0, 42, 1234]
SETTINGS = dict(guidance_scale=6.0, student_steps=3, teacher_steps=5, sigma=0.6)


@pytest.fixture(scope="module")
def xl_server(tiny_xl_repository):
    from tests.triton_fixtures import running_server

    with running_server(tiny_xl_repository) as server:
        yield server


def _reference(xl_reference, strategy: str) -> np.ndarray:
    s = GenerationSettings(**SETTINGS, strategy=strategy, tau=1e6)
    if strategy == "teacher_only":
        return xl_reference.teacher(PROMPTS, SEEDS, s).uint8
    if strategy == "student_only":
        return xl_reference.student(PROMPTS, SEEDS, s).uint8
    return xl_reference.refine(PROMPTS, SEEDS, s)[1].uint8


@pytest.mark.parametrize("strategy", ["teacher_only", "student_only", "refine"])
def test_served_sdxl_equals_diffusers_and_the_inprocess_pipeline(xl_server, xl_reference, xl_ort_pipeline, strategy):
    with AdaptiveClient(xl_server.grpc_url, "grpc") as client:
        got = client.generate(PROMPTS, SEEDS, strategy=strategy, tau=1e6, **SETTINGS)
    expected_route = {"teacher_only": "teacher", "student_only": "student", "refine": "refined"}[strategy]
    assert [g.route for g in got] == [expected_route] * len(PROMPTS)
    reference = _reference(xl_reference, strategy)
    inprocess = xl_ort_pipeline(PROMPTS, SEEDS, GenerationSettings(**SETTINGS, strategy=strategy, tau=1e6))
    for i, g in enumerate(got):
        assert g.image.shape == reference[i].shape == (128, 128, 3)
        diff = int(np.abs(g.image.astype(int) - reference[i].astype(int)).max())
        assert diff <= 1, f"{strategy} row {i}: served SDXL image differs from diffusers' by {diff} LSB"
        np.testing.assert_array_equal(g.image, inprocess.images[i], err_msg=f"{strategy} row {i}: served != in-process")
    np.testing.assert_allclose([g.score for g in got], inprocess.scores, atol=1e-5)


def test_served_sdxl_text_towers_each_run_once_per_request(xl_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(xl_server.grpc_url)

    def count(model: str) -> int:
        return int(client.get_inference_statistics(model, as_json=True)["model_stats"][0].get("inference_count", 0))

    before = {m: count(m) for m in ("text_encoder", "text_encoder_2")}
    with AdaptiveClient(xl_server.grpc_url, "grpc") as c:
        c.generate(PROMPTS[:2], SEEDS[:2], strategy="student_only", **SETTINGS)
    after = {m: count(m) for m in ("text_encoder", "text_encoder_2")}
    client.close()
    # Two rows, CFG-doubled: the prompt and the negative prompt of each, through each tower.
    assert {m: after[m] - before[m] for m in after} == {"text_encoder": 4, "text_encoder_2": 4}


def test_concurrent_requests_of_different_sizes_each_get_their_own_image(xl_server, xl_ort_pipeline):
    sizes = [(64, 192), (128, 128), (64, 192), (192, 64)]
    settings = dict(SETTINGS, strategy="student_only")

    def one(i: int):
        h, w = sizes[i]
        with AdaptiveClient(xl_server.grpc_url, "grpc") as client:
            return client.generate([PROMPTS[i % 3]], [SEEDS[i % 3]], height=h, width=w, **settings)[0]

    with ThreadPoolExecutor(len(sizes)) as pool:
        got = list(pool.map(one, range(len(sizes))))
    for i, g in enumerate(got):
        h, w = sizes[i]
        alone = xl_ort_pipeline([PROMPTS[i % 3]], [SEEDS[i % 3]], GenerationSettings(**settings, height=h, width=w))
        assert g.image.shape == (h, w, 3)
        np.testing.assert_array_equal(g.image, alone.images[0], err_msg=f"request {i} at {h}x{w}")


def test_triton_batches_component_requests_only_when_their_shapes_match(xl_server):
    """Triton 2.51's dynamic batcher merges queued requests only if every input's non-batch shape is
    equal: a component fed concurrent requests of two latent sizes answers each at its own size
    (a merged call would fail the ONNX Runtime model's concatenation), while same-size requests do
    get merged (the batcher is on)."""
    import tritonclient.grpc as grpcclient

    rng = np.random.default_rng(0)
    latents = [rng.standard_normal((1, 4, s, s)).astype(np.float32) for s in (8, 16, 24) * 6]
    client = grpcclient.InferenceServerClient(xl_server.grpc_url)

    def infer(latent):
        inp = grpcclient.InferInput("latent", list(latent.shape), "FP32")
        inp.set_data_from_numpy(latent)
        return client.infer("vae_decoder", [inp], outputs=[grpcclient.InferRequestedOutput("image")]).as_numpy("image")

    before = client.get_inference_statistics("vae_decoder", as_json=True)["model_stats"][0]
    with ThreadPoolExecutor(len(latents)) as pool:
        merged = list(pool.map(infer, latents))
    after = client.get_inference_statistics("vae_decoder", as_json=True)["model_stats"][0]
    for latent, image in zip(latents, merged):
        assert image.shape == (1, 3, 8 * latent.shape[2], 8 * latent.shape[3])
        np.testing.assert_allclose(image, infer(latent), atol=1e-5)
    client.close()
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    assert inferences >= len(latents)
    # Not asserted: that some executions merged requests (that depends on the queue at the time);
    # reported for the record when it happens.
    print(f"vae_decoder: {inferences} inferences in {executions} executions")


def test_a_size_the_deployment_does_not_serve_gets_invalid_arg_naming_height(xl_server):
    from tritonclient.utils import InferenceServerException

    with AdaptiveClient(xl_server.grpc_url, "grpc") as client:
        with pytest.raises(InferenceServerException) as err:
            client.generate(PROMPTS[:1], SEEDS[:1], height=80, width=128, strategy="student_only", **SETTINGS)
        assert "height" in str(err.value) and "[64, 192]" in str(err.value)
        ok = client.generate(PROMPTS[:1], SEEDS[:1], strategy="student_only", **SETTINGS)
    assert ok[0].image.shape == (128, 128, 3)
