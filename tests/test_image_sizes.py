"""Per-request image sizes (``height``/``width``), for both families.

A deployment serves every multiple of its size multiple in [min, max] (its engine profiles' range;
the multiple keeps every UNet level's side whole, see export.checkpoints.sources.size_multiple).
A request at another size reproduces diffusers' pipeline called with that ``height``/``width``;
rows of different sizes never share a component call (the batch key holds the size; the in-process
step batcher merges only calls of equal shapes; Triton's dynamic batcher merges only requests
whose non-batch shapes match: tests/test_sdxl_served.py checks that on the server).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from bll_python.settings import GenerationSettings, SettingsError
from bll_python.step_batcher import StepBatcher, threaded

PROMPTS = ["a red fox in the snow", "a bowl of ramen"]
SEEDS = [7, 8]
# Torch engines vs diffusers: as tests/test_pipeline_parity.py (SD1.5) and test_sdxl_parity.py (SDXL).
LATENT_ATOL = 1e-4
IMAGE_ATOL = 1e-4


def _settings(**kw) -> GenerationSettings:
    return GenerationSettings(**{**dict(guidance_scale=6.0, student_steps=2, teacher_steps=3, sigma=0.6, tau=0.0), **kw})


def test_deployments_record_the_sizes_their_engines_take(deployment, xl_deployment):
    # tiny: 4 UNet levels (3 downsamplings) under the VAE's 8x; tiny-xl: SDXL's 3 levels.
    assert (deployment.min_image_size, deployment.image_size, deployment.max_image_size, deployment.size_multiple) == (64, 128, 192, 64)
    assert (xl_deployment.min_image_size, xl_deployment.image_size, xl_deployment.max_image_size, xl_deployment.size_multiple) == (64, 128, 192, 32)
    unet = xl_deployment.specs()["unet_teacher"]
    assert unet.tensor("sample").dims[2:] == ("latent_height", "latent_width")
    assert (unet.profile["latent_height"].min, unet.profile["latent_height"].opt, unet.profile["latent_height"].max) == (8, 16, 24)
    # ImageReward takes the native size only: its graph holds upstream's resize for that size, and
    # the pipeline brings other sizes there before the call.
    reward = xl_deployment.specs()["image_reward"]
    assert reward.tensor("image").dims[2:] == (128, 128)


@pytest.mark.parametrize("height, width, field", [(80, 128, "height"), (128, 256, "width"), (32, 128, "height"), (128, 100, "width")])
def test_a_size_the_engines_do_not_take_is_refused_naming_the_field_and_the_range(xl_deployment, height, width, field):
    # A side that is no multiple of 8 is refused with the request's settings; one outside this
    # deployment's range or grid (tiny-xl: multiples of 32 in [64, 192]) by the deployment.
    with pytest.raises(SettingsError) as err:
        xl_deployment.resolve_size(_settings(height=height, width=width))
    assert err.value.field == field
    assert "multiple of 8" in str(err.value) if width == 100 else "multiples of 32 in [64, 192]" in str(err.value)


@torch.no_grad()
def test_sdxl_at_another_size_equals_diffusers_at_that_size(xl_torch_pipeline, xl_reference):
    for strategy, ref in (("teacher_only", xl_reference.teacher), ("student_only", xl_reference.student)):
        s = _settings(strategy=strategy, height=64, width=192)
        ours = xl_torch_pipeline(PROMPTS, SEEDS, s)
        expected = ref(PROMPTS, SEEDS, s)
        assert ours.images.shape == (2, 64, 192, 3)
        scale = LATENT_ATOL + 1e-5 * float(expected.latents.abs().max())
        assert float((ours.latents - expected.latents).abs().max()) < scale, strategy
        assert float(np.abs(ours.images_float.permute(0, 2, 3, 1).numpy() - expected.images).max()) < IMAGE_ATOL, strategy


@torch.no_grad()
def test_sd15_at_another_size_equals_diffusers_at_that_size(torch_pipeline, diffusers_reference):
    s = _settings(strategy="teacher_only", height=192, width=64)
    ours = torch_pipeline(PROMPTS, SEEDS, s)
    gens = [torch.Generator("cpu").manual_seed(x) for x in SEEDS]
    ref = diffusers_reference.teacher_pipe(PROMPTS, height=192, width=64, num_inference_steps=s.teacher_steps, guidance_scale=s.guidance_scale, generator=gens, output_type="latent").images
    assert ours.images.shape == (2, 192, 64, 3)
    assert float((ours.latents - ref).abs().max()) < LATENT_ATOL


@torch.no_grad()
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_exported_graphs_take_every_size_of_the_range(family, torch_pipeline, ort_pipeline, xl_torch_pipeline, xl_ort_pipeline):
    torch_pipe, ort_pipe = (torch_pipeline, ort_pipeline) if family == "sd15" else (xl_torch_pipeline, xl_ort_pipeline)
    for height, width in ((64, 64), (192, 128)):
        s = _settings(strategy="refine", tau=1e6, height=height, width=width)
        a, b = torch_pipe(PROMPTS[:1], SEEDS[:1], s), ort_pipe(PROMPTS[:1], SEEDS[:1], s)
        assert b.images.shape == (1, height, width, 3)
        assert float((a.images_float - b.images_float).abs().max()) < 1e-3
        # The reward graph rounds to 8-bit levels as upstream's PIL path does, so an image difference
        # far below 1/255 can still flip a level: scores agree to 1e-3, not to float precision.
        assert abs(float(a.scores[0] - b.scores[0])) < 1e-3


def test_the_step_batcher_merges_only_calls_of_the_same_size(xl_ort_pipeline):
    pipe = xl_ort_pipeline
    engines = {name: pipe.engines[name] for name in pipe.engines}
    sizes = [(64, 64), (128, 128), (64, 64), (128, 128)]

    async def run():
        batcher = StepBatcher(threaded(engines), {name: e.spec.max_batch for name, e in engines.items()})
        try:
            programs = [pipe.program([p], [seed], _settings(strategy="student_only", height=h, width=w)) for (h, w), p, seed in zip(sizes, PROMPTS * 2, [1, 2, 3, 4])]
            return await asyncio.gather(*(batcher.run(p) for p in programs)), batcher
        finally:
            await batcher.close()

    results, _ = asyncio.run(run())
    for (h, w), r, p, seed in zip(sizes, results, PROMPTS * 2, [1, 2, 3, 4]):
        alone = pipe([p], [seed], _settings(strategy="student_only", height=h, width=w))
        assert r.images.shape == (1, h, w, 3)
        np.testing.assert_array_equal(r.images, alone.images)


def test_a_request_whose_rows_ask_for_different_sizes_is_refused_naming_the_field():
    from bll_python.serving import parse_request

    column = lambda *values: np.array([[v] for v in values])  # noqa: E731
    tensors = {"prompt": column(b"a", b"b"), "height": column(64, 128).astype(np.int32)}
    with pytest.raises(SettingsError) as err:
        parse_request(tensors, GenerationSettings())
    assert err.value.field == "height" and "separate requests" in str(err.value)
    same = parse_request({**tensors, "height": column(64, 64).astype(np.int32)}, GenerationSettings())
    assert [r.settings.height for r in same] == [64, 64]
