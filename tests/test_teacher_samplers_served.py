"""Served ``teacher_only`` and ``refine`` with the UniPC teacher solver (not the default) equal the in-process
pipeline on the same repository, bit for bit, and diffusers' pipelines with that scheduler within 1
of 255 levels (in-process against diffusers, per solver and strategy: tests/test_teacher_samplers.py).

The teacher solver is a deployment setting and nothing else: ``--teacher-sampler`` changes the
manifest's ``teacher_scheduler`` recipe (``teacher_recipe``) and no graph. So each solver's
repository is the tiny repository copied with that recipe written into its manifest, rather than a
second export of the same graphs; tests/test_teacher_samplers.py checks that the export records
exactly this recipe. One server per solver, one after the other (a module fixture per solver).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bll_python.deployment import Deployment
from bll_python.inprocess import inprocess_pipeline
from bll_python.layout import assets_dir
from bll_python.settings import GenerationSettings
from clients.client import AdaptiveClient
from export.checkpoints.samplers import teacher_recipe

pytestmark = pytest.mark.server

PROMPTS = ["a red fox in the snow", "a bowl of ramen"]
SEEDS = [0, 1234]
SETTINGS = dict(guidance_scale=7.5, student_steps=3, teacher_steps=4, sigma=0.6)
# UniPC only: served, a solver is nothing but the manifest's recipe, read by the same code for
# every solver, and a server start costs CI ~30 s; DDIM is checked against diffusers in-process.
SOLVERS = {"unipc": "UniPCMultistepScheduler"}


@pytest.fixture(scope="module", params=list(SOLVERS))
def solver_repository(request, tiny_repository, tiny_models, tmp_path_factory) -> tuple[str, Path]:
    name = request.param
    repo = tmp_path_factory.mktemp(f"tiny-{name}") / "repository"
    shutil.copytree(tiny_repository, repo)
    deployment = Deployment.load(assets_dir(repo))
    replace(deployment, teacher_scheduler=teacher_recipe(tiny_models.raw["schedule"], name)).save(assets_dir(repo))
    return name, repo


@pytest.fixture(scope="module")
def solver_server(solver_repository):
    from tests.triton_fixtures import running_server

    with running_server(solver_repository[1]) as server:
        yield server


@pytest.fixture(scope="module")
def solver_pipelines(solver_repository, tiny_models):
    """(the in-process ONNX Runtime pipeline, diffusers' pipelines) on the solver's repository."""
    from tests.diffusers_reference import DiffusersReference

    pipe = inprocess_pipeline(solver_repository[1])
    return pipe, DiffusersReference(tiny_models, pipe.deployment)


def _teacher_rows(server) -> int:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return int(client.get_inference_statistics("unet_teacher", as_json=True)["model_stats"][0].get("inference_count", 0))
    finally:
        client.close()


@pytest.mark.parametrize("strategy", ["teacher_only", "refine"])
def test_served_solver_equals_inprocess_and_diffusers(solver_repository, solver_server, solver_pipelines, strategy):
    name, _ = solver_repository
    inprocess, diffusers = solver_pipelines
    assert inprocess.deployment.teacher_scheduler.cls == SOLVERS[name]
    before = _teacher_rows(solver_server)
    with AdaptiveClient(solver_server.grpc_url, "grpc") as client:
        got = client.generate(PROMPTS, SEEDS, strategy=strategy, tau=1e6, **SETTINGS)
    teacher_rows = _teacher_rows(solver_server) - before

    s = GenerationSettings(**SETTINGS, strategy=strategy, tau=1e6)
    local = inprocess(PROMPTS, SEEDS, s)
    reference = (diffusers.teacher(PROMPTS, SEEDS, s) if strategy == "teacher_only" else diffusers.refine(PROMPTS, SEEDS, s)).uint8
    assert [g.route for g in got] == [r.value for r in local.routes] == [{"teacher_only": "teacher", "refine": "refined"}[strategy]] * len(PROMPTS)
    # Each teacher step runs each row twice (classifier-free guidance): no step more or less than the solver's.
    assert teacher_rows == 2 * len(PROMPTS) * SETTINGS["teacher_steps"]
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g.image, local.images[i], err_msg=f"{name} {strategy} row {i}: served != in-process")
        diff = int(np.abs(g.image.astype(int) - reference[i].astype(int)).max())
        print(f"[served {name} {strategy}] row {i}: max diff to diffusers {diff} LSB")
        assert diff <= 1, f"{name} {strategy} row {i}: served image differs from diffusers' by {diff} LSB"
    np.testing.assert_allclose([g.score for g in got], local.scores, atol=1e-5)
