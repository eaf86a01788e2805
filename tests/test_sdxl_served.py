"""The SDXL family served by Triton reproduces diffusers' SDXL pipelines and the in-process pipeline.

One tritonserver on the tiny-xl repository (seven models: both text towers, two UNets taking the
added conditions, the VAE, ImageReward and the BLS). Served images are compared with
``StableDiffusionXLPipeline`` / ``StableDiffusionXLImg2ImgPipeline`` on the same weights and seeds
(within 1 of 255 levels, as for SD1.5 in tests/test_serving.py) and with the in-process ONNX Runtime
pipeline over the same graphs.
"""

from __future__ import annotations

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
