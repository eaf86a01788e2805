"""The written repository: typed configs that parse back to what was built, and a self-contained
core, which a live server really imports (not the project's editable install)."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

import bll_python
from bll_python.deployment import Deployment
from bll_python.layout import BLS_MODEL, assets_dir, read_model_config, version_dir
from clients.client import AdaptiveClient
from export.triton.configs import bls_config, component_config
from export.triton.model_files import CORE_NAME
from export.triton.placement import CpuPlacement
from tests.triton_fixtures import ServerStartError, TritonServer, free_ports, running_server

CORE = Path(bll_python.__file__).resolve().parent


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


def test_written_configs_parse_back_to_the_typed_configs(tiny_repository, deployment):
    placement = CpuPlacement.for_this_host()  # the writer places instances for the machine it runs on
    for name, spec in deployment.specs().items():
        assert read_model_config(tiny_repository, name) == component_config(spec, instances=placement.component_instances), name
    assert read_model_config(tiny_repository, BLS_MODEL) == bls_config(deployment, instances=placement.bls_instances)


def test_every_python_model_carries_the_core_it_imports(tiny_repository, deployment):
    for name in [*deployment.specs(), BLS_MODEL]:
        copy = version_dir(tiny_repository, name) / CORE_NAME
        assert copy.is_dir() and _same_tree(CORE, copy), f"{name}: {copy} differs from {CORE}"


def _copy_repository(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.mark.server
def test_the_served_bls_runs_the_core_inside_the_repository(tiny_repository, tmp_path):
    """The stub must import ``adaptive_diffusion/1/bll_python``, not the editable install of the
    project it runs beside: a limit changed only in that copy is the limit the server enforces."""
    repo = _copy_repository(tiny_repository, tmp_path / "repository")
    settings = version_dir(repo, BLS_MODEL) / CORE_NAME / "settings.py"
    text = settings.read_text()
    assert '"student_steps": Range(1, 50)' in text
    # 6 still admits the deployment's default of 5 student steps.
    settings.write_text(text.replace('"student_steps": Range(1, 50)', '"student_steps": Range(1, 6)'))
    deployment = Deployment.load(assets_dir(repo))
    # The altered copy is the point here, so the fixture must not refuse it as stale.
    with running_server(repo, check_tree=False) as server:
        with AdaptiveClient(server.grpc_url, "grpc") as client:
            (ok,) = client.generate(["a red fox"], [1], strategy="student_only", student_steps=2)
            assert ok.image.shape == (deployment.image_size, deployment.image_size, 3)
            with pytest.raises(InferenceServerException, match=r"student_steps.*\[1, 6\]"):
                client.generate(["a red fox"], [1], strategy="student_only", student_steps=7)


@pytest.mark.server
def test_a_served_component_imports_its_own_copy_of_the_core(tiny_repository, tmp_path):
    repo = _copy_repository(tiny_repository, tmp_path / "repository")
    (version_dir(repo, "vae_decoder") / CORE_NAME / "ort_options.py").write_text('raise ImportError("the copy inside vae_decoder/1 was imported")\n')
    http, grpc, metrics = free_ports(3)
    server = TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, ready_timeout=120)
    server.start()
    try:
        with pytest.raises(ServerStartError, match="failed to load"):
            server.wait_ready()
        log = server.log_tail(2000)
    finally:
        server.stop()
    assert "the copy inside vae_decoder/1 was imported" in log


@pytest.fixture
def tensorrt_repository(tiny_repository, deployment, tmp_path):
    """The tiny repository rewritten for TensorRT plans (stand-in plan files: nothing here runs them)."""
    from export.triton.tensorrt import write_tensorrt_repository

    repo = _copy_repository(tiny_repository, tmp_path / "repository")
    for name in deployment.specs():
        (version_dir(repo, name) / "model.plan").write_bytes(b"not an engine")
        (version_dir(repo, name) / "model.onnx").unlink()
    return repo, write_tensorrt_repository(repo, deployment, gpus=[0])


def test_a_tensorrt_plan_folder_carries_no_python(tensorrt_repository, deployment):
    repo, _ = tensorrt_repository
    for name in deployment.specs():
        assert sorted(p.name for p in version_dir(repo, name).iterdir()) == ["model.plan"], name
    assert _same_tree(CORE, version_dir(repo, BLS_MODEL) / CORE_NAME), "the BLS keeps its core"


def test_the_launcher_passes_the_server_flags_the_repository_records(tensorrt_repository, tiny_repository):
    repo, written = tensorrt_repository
    assert written.server_args == [f"--cuda-memory-pool-byte-size=0:{written.cuda_pool_bytes}"]
    command = TritonServer(repo, extra_args=["--log-info=false"]).command()
    assert command[-2:] == [*written.server_args, "--log-info=false"], "the repository's flags first, the caller's last"
    assert not any(arg.startswith("--cuda-memory-pool-byte-size") for arg in TritonServer(tiny_repository).command())
