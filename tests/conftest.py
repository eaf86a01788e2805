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
def tiny_repository(tiny_sources, tmp_path_factory) -> Path:
    """A complete ONNX Runtime model repository with a calibrated tau (24 held-out prompts)."""
    from bll_python.prompts import read_prompts
    from export.build import export_repository
    from export.defaults import CALIBRATION_PROMPTS

    repo = tmp_path_factory.mktemp("tiny") / "repository"
    export_repository(tiny_sources, repo, preset="tiny", calibration_prompts=read_prompts(CALIBRATION_PROMPTS)[:24], progress=False)
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
