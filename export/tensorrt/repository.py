"""ONNX Runtime repository in, TensorRT repository out: the BLS and its assets copied, engines built, GPU configs written."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from bll_python.deployment import Deployment
from bll_python.layout import BLS_MODEL, assets_dir, model_dir
from export.tensorrt.availability import require_tensorrt
from export.tensorrt.plan import BuildOptions, BuildResult, build_engines, repository_builds
from export.triton.placement import Placement
from export.triton.tensorrt import TensorRTRepository, write_tensorrt_repository


def build_tensorrt_repository(
    source: Path,
    target: Path,
    *,
    backend: str = "tensorrt",
    placement: Placement | None = None,
    gpus: Sequence[int] | None = None,
    timing_cache: Path | None = None,
    options: BuildOptions | None = None,
) -> tuple[TensorRTRepository, list[BuildResult]]:
    """Needs tensorrt and a GPU."""
    require_tensorrt()
    source, target = Path(source), Path(target)
    deployment = Deployment.load(assets_dir(source))
    shutil.copytree(model_dir(source, BLS_MODEL), model_dir(target, BLS_MODEL), dirs_exist_ok=True)
    builds = repository_builds(source, deployment.specs(), target, timing_cache=timing_cache, options=options or BuildOptions(), deployment=deployment)
    results = build_engines(builds)
    return write_tensorrt_repository(target, deployment, backend=backend, placement=placement, gpus=gpus), results
