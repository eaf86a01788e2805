"""SDXL-Refiner served by Triton: ``refine`` rows with sigma <= ``refiner_max_sigma`` run on the
``unet_refiner`` model, larger rollbacks on the base ``unet_teacher``, and either way the served
images are diffusers' ``StableDiffusionXLImg2ImgPipeline`` (refiner or base configuration) within
1 of 255 levels and the in-process ONNX Runtime pipeline bit for bit, as for the base in
tests/test_sdxl_served.py. Which UNet ran is read from Triton's own statistics.

The repository is written by ``python -m export --preset tiny-xl --refiner preset`` (tiny-xl plus an
SDXL-Refiner-layout folder, export.checkpoints.presets.write_xl_refiner), without calibration (the
tests pass tau); the references load the checkpoints that command wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bll_python.deployment import Deployment
from bll_python.inprocess import inprocess_pipeline
from bll_python.layout import assets_dir
from bll_python.settings import GenerationSettings
from clients.client import AdaptiveClient
from export.checkpoints.sources import Sources
from export.models.image_reward_config import CHECKPOINT_NAME, CONFIG_NAME

pytestmark = pytest.mark.server

PROMPTS = ["a red fox in the snow", "an old lighthouse at dusk, oil painting"]
SEEDS = [5, 77]
SETTINGS = dict(guidance_scale=5.0, student_steps=2, teacher_steps=3)
UNETS = ("unet_teacher", "unet_refiner")


@pytest.fixture(scope="module")
def refiner_export(tmp_path_factory) -> tuple[Path, Sources]:
    """(the repository, the checkpoints it was exported from) of the documented command."""
    from export.build import checkpoint_dir
    from export.cli import main

    repo = tmp_path_factory.mktemp("tiny-xl-refiner") / "repository"
    assert main(["--preset", "tiny-xl", "--refiner", "preset", "--calibration-count", "0", "--out", str(repo), "--quiet"]) == 0
    ckpt = checkpoint_dir(repo)
    reward = ckpt / "reward" / CHECKPOINT_NAME
    sources = Sources(
        teacher=ckpt / "teacher", student=ckpt / "student", student_kind="cd", reward=reward, reward_config=reward.with_name(CONFIG_NAME), refiner=ckpt / "refiner"
    )
    return repo, sources


@pytest.fixture(scope="module")
def refiner_repository(refiner_export) -> Path:
    return refiner_export[0]


@pytest.fixture(scope="module")
def refiner_server(refiner_repository):
    from tests.triton_fixtures import running_server

    with running_server(refiner_repository) as server:
        yield server


@pytest.fixture(scope="module")
def refiner_inprocess(refiner_repository):
    return inprocess_pipeline(refiner_repository)


@pytest.fixture(scope="module")
def refiner_reference(refiner_export):
    from export.checkpoints.sources import load_sources
    from tests.diffusers_reference_xl import DiffusersXLReference

    repo, sources = refiner_export
    return DiffusersXLReference(load_sources(sources), Deployment.load(assets_dir(repo)))


def _rows_run(server) -> dict[str, int]:
    """Rows each UNet model has run, from Triton's statistics (``inference_count`` counts batch rows)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return {m: int(client.get_inference_statistics(m, as_json=True)["model_stats"][0].get("inference_count", 0)) for m in UNETS}
    finally:
        client.close()


def test_the_served_repository_has_the_refiner_as_its_own_model(refiner_server, refiner_repository):
    import tritonclient.grpc as grpcclient

    deployment = Deployment.load(assets_dir(refiner_repository))
    assert deployment.optional_components == ["unet_refiner"] and deployment.refiner_max_sigma == 0.5
    client = grpcclient.InferenceServerClient(refiner_server.grpc_url)
    try:
        assert client.is_model_ready("unet_refiner")
        config = client.get_model_config("unet_refiner", as_json=True)["config"]
    finally:
        client.close()
    # Conditioned on the second tower alone, with aesthetic-score time ids (5 values, not the base's 6).
    dims = {i["name"]: [int(d) for d in i["dims"]] for i in config["input"]}
    assert dims["encoder_hidden_states"][-1] == deployment.text_hidden_2 and dims["time_ids"] == [5]


@pytest.mark.parametrize("sigma, unet", [(0.4, "unet_refiner"), (0.85, "unet_teacher")])
def test_served_refine_runs_the_unet_its_sigma_picks_and_equals_diffusers_img2img(refiner_server, refiner_inprocess, refiner_reference, sigma, unet):
    before = _rows_run(refiner_server)
    with AdaptiveClient(refiner_server.grpc_url, "grpc") as client:
        got = client.generate(PROMPTS, SEEDS, strategy="refine", tau=1e6, sigma=sigma, **SETTINGS)
    after = _rows_run(refiner_server)

    assert [g.route for g in got] == ["refined"] * len(PROMPTS)
    assert [g.unet_steps for g in got] == [SETTINGS["student_steps"] + SETTINGS["teacher_steps"]] * len(PROMPTS)
    # Every teacher step runs each row twice (classifier-free guidance), all on the UNet sigma picks.
    ran = {m: after[m] - before[m] for m in UNETS}
    assert ran == {m: (2 * len(PROMPTS) * SETTINGS["teacher_steps"] if m == unet else 0) for m in UNETS}, f"sigma {sigma}: rows per UNet {ran}"

    s = GenerationSettings(**SETTINGS, sigma=sigma, strategy="refine", tau=1e6)
    reference = refiner_reference.refine(PROMPTS, SEEDS, s)[1].uint8
    inprocess = refiner_inprocess(PROMPTS, SEEDS, s)
    for i, g in enumerate(got):
        assert g.image.shape == reference[i].shape == (128, 128, 3)
        diff = int(np.abs(g.image.astype(int) - reference[i].astype(int)).max())
        print(f"[served refine sigma={sigma} on {unet}] row {i}: max diff to diffusers {diff} LSB")
        assert diff <= 1, f"sigma {sigma} row {i}: served image differs from diffusers' img2img by {diff} LSB"
        np.testing.assert_array_equal(g.image, inprocess.images[i], err_msg=f"sigma {sigma} row {i}: served != in-process")
    np.testing.assert_allclose([g.score for g in got], inprocess.scores, atol=1e-5)


def test_the_refiner_and_the_base_really_differ(refiner_reference):
    # Otherwise the parity above could pass with the wrong UNet behind the refiner's name.
    s = GenerationSettings(**SETTINGS, sigma=0.4, strategy="refine", tau=1e6)
    by_refiner = refiner_reference.refine(PROMPTS, SEEDS, s)[1]
    by_base = refiner_reference.refine(PROMPTS, SEEDS, s, img2img=refiner_reference.img2img_pipe)[1]
    latent_diff = float((by_refiner.latents - by_base.latents).abs().max())
    image_diff = int(np.abs(by_refiner.uint8.astype(int) - by_base.uint8.astype(int)).max())
    print(f"refiner vs base at sigma 0.4: max latent diff {latent_diff:.3g}, max image diff {image_diff} LSB")
    assert latent_diff > 0.1 and image_diff > 1, "the served tolerance (1 LSB) would not tell the refiner from the base"
