"""Session fixtures: the tiny preset written once, exported once, loaded as torch and ORT engines."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Two CPU cores: more threads only make torch and ORT fight each other.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from bll_python.deployment import Deployment  # noqa: E402
from bll_python.engines import Engines, TorchEngine  # noqa: E402
from bll_python.inprocess import inprocess_pipeline, load_tokenizers  # noqa: E402
from bll_python.layout import assets_dir  # noqa: E402
from bll_python.pipeline import AdaptivePipeline  # noqa: E402


_TINY_ROOTS = {"tiny_checkpoints", "tiny_sources", "tiny_repository", "tiny_models", "tiny_xl_sources", "tiny_xl_repository", "tiny_xl_models", "tiny_xl_refiner_sources"}


def pytest_collection_modifyitems(config, items):
    # "tiny" marks every test that needs the tiny export, so `-m "not tiny"` keeps the tests that
    # run in seconds (make mutate selects them).
    for item in items:
        if _TINY_ROOTS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.tiny)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    from export.checkpoints.presets import write_preset

    return write_preset(tmp_path_factory.mktemp("checkpoints"), "tiny")


@pytest.fixture(scope="session")
def tiny_sources(tiny_checkpoints):
    from export.checkpoints.sources import Sources

    c = tiny_checkpoints
    return Sources(teacher=c["teacher"], student=c["student"], student_kind="cd", reward=c["reward"], reward_config=c["reward_config"])


@pytest.fixture(scope="session")
def calibration_prompts() -> list[str]:
    """The held-out prompts the tiny repository's tau is calibrated on (seeds 0, 1, ... in order)."""
    from bll_python.prompts import read_prompts
    from export.defaults import CALIBRATION_PROMPTS

    return read_prompts(CALIBRATION_PROMPTS)[:24]


@pytest.fixture(scope="session")
def tiny_repository(tiny_sources, calibration_prompts, tmp_path_factory) -> Path:
    """A complete ONNX Runtime model repository with a calibrated tau (24 held-out prompts)."""
    from export.build import export_repository

    repo = tmp_path_factory.mktemp("tiny") / "repository"
    export_repository(tiny_sources, repo, preset="tiny", calibration_prompts=calibration_prompts, progress=False)
    return repo


@pytest.fixture(scope="session")
def deployment(tiny_repository) -> Deployment:
    return Deployment.load(assets_dir(tiny_repository))


@pytest.fixture(scope="session")
def tiny_models(tiny_sources):
    from export.checkpoints.sources import load_sources

    return load_sources(tiny_sources)


@pytest.fixture(scope="session")
def torch_engines(tiny_models, deployment) -> Engines:
    specs = deployment.specs()
    return Engines(**{name: TorchEngine(tiny_models.modules[name], spec) for name, spec in specs.items()})


@pytest.fixture(scope="session")
def torch_pipeline(torch_engines, deployment, tiny_repository) -> AdaptivePipeline:
    return AdaptivePipeline(torch_engines, deployment, load_tokenizers(tiny_repository, deployment))


@pytest.fixture(scope="session")
def ort_pipeline(tiny_repository) -> AdaptivePipeline:
    return inprocess_pipeline(tiny_repository)


@pytest.fixture(scope="session")
def tiny_server(tiny_repository):
    """One real tritonserver on the tiny repository, on free ports, shared by the serving tests.

    Tests must not change its state (no unload); tests that break things start their own.
    """
    from tests.triton_fixtures import running_server

    with running_server(tiny_repository) as server:
        yield server


@pytest.fixture(scope="session")
def diffusers_reference(tiny_models, deployment):
    """diffusers' StableDiffusion(Img2Img)Pipeline on the tiny weights (tests/diffusers_reference.py)."""
    from tests.diffusers_reference import DiffusersReference

    return DiffusersReference(tiny_models, deployment)


@pytest.fixture(scope="session")
def mixed_batch(ort_pipeline):
    """Six rows and a tau between their student scores: two rows go to the teacher, four do not.

    Asymmetric on purpose: a gate that sent the wrong side would send four rows, which routes,
    step counts and Triton's teacher row counts all tell apart.
    """
    from tests.gate import mixed_batch

    return mixed_batch(ort_pipeline)


@pytest.fixture(scope="session")
def calibration_scores(ort_pipeline, deployment, calibration_prompts):
    """The student's scores on the calibration prompts, recomputed here with the calibration's settings."""
    from bll_python.settings import GenerationSettings

    settings = GenerationSettings(**deployment.calibration.settings)
    assert settings.strategy.value == "student_only" and deployment.calibration.prompts == len(calibration_prompts)
    scores = []
    for i in range(0, len(calibration_prompts), deployment.max_rows):
        chunk = calibration_prompts[i : i + deployment.max_rows]
        scores.extend(ort_pipeline(chunk, list(range(i, i + len(chunk))), settings).scores.tolist())
    return scores


# ---------------------------------------------------------------------------------------------
# The SDXL family: the tiny-xl preset (random weights, SDXL's architectures and on-disk formats).
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_xl_sources(tmp_path_factory):
    from export.checkpoints.presets import preset_sources

    return preset_sources("tiny-xl", tmp_path_factory.mktemp("checkpoints-xl"))


@pytest.fixture(scope="session")
def tiny_xl_refiner_sources(tiny_xl_sources, tmp_path_factory):
    """tiny-xl with an SDXL-Refiner-layout folder (write_xl_refiner) for rows refined with sigma <= 0.5."""
    from export.checkpoints.presets import write_xl_refiner
    from export.checkpoints.sources import Sources

    refiner = write_xl_refiner(tmp_path_factory.mktemp("refiner") / "refiner", Path(tiny_xl_sources.teacher))
    return Sources(**{**vars(tiny_xl_sources), "refiner": refiner, "refiner_max_sigma": 0.5})


@pytest.fixture(scope="session")
def tiny_xl_repository(tiny_xl_sources, calibration_prompts, tmp_path_factory) -> Path:
    """The tiny-xl ONNX Runtime repository, its tau calibrated on 8 held-out prompts."""
    from export.build import export_repository

    repo = tmp_path_factory.mktemp("tiny-xl") / "repository"
    export_repository(tiny_xl_sources, repo, preset="tiny-xl", calibration_prompts=calibration_prompts[:8], progress=False)
    return repo


@pytest.fixture(scope="session")
def xl_deployment(tiny_xl_repository) -> Deployment:
    return Deployment.load(assets_dir(tiny_xl_repository))


@pytest.fixture(scope="session")
def tiny_xl_models(tiny_xl_sources):
    from export.checkpoints.sources import load_sources

    return load_sources(tiny_xl_sources)


@pytest.fixture(scope="session")
def xl_torch_pipeline(tiny_xl_models, xl_deployment, tiny_xl_repository) -> AdaptivePipeline:
    engines = Engines(**{name: TorchEngine(tiny_xl_models.modules[name], spec) for name, spec in xl_deployment.specs().items()})
    return AdaptivePipeline(engines, xl_deployment, load_tokenizers(tiny_xl_repository, xl_deployment))


@pytest.fixture(scope="session")
def xl_ort_pipeline(tiny_xl_repository) -> AdaptivePipeline:
    return inprocess_pipeline(tiny_xl_repository)


@pytest.fixture(scope="session")
def xl_reference(tiny_xl_models, xl_deployment):
    """diffusers' StableDiffusionXL(Img2Img)Pipeline on the tiny-xl weights (tests/diffusers_reference_xl.py)."""
    from tests.diffusers_reference_xl import DiffusersXLReference

    return DiffusersXLReference(tiny_xl_models, xl_deployment)
