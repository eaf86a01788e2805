"""The ONNX Runtime repository (runs anywhere): each component is a Python-backend model that runs
its ``model.onnx`` with ONNX Runtime (template ``model_repository/onnxruntime_component``)."""

from __future__ import annotations

from pathlib import Path

from bll_python.deployment import Deployment
from bll_python.layout import BLS_MODEL
from export.triton.configs import bls_config, component_config, write_config
from export.triton.model_files import BLS_TEMPLATE, ORT_TEMPLATE, place_python_model
from export.triton.placement import CpuPlacement


def write_onnxruntime_repository(repository: Path, deployment: Deployment, placement: CpuPlacement | None = None) -> None:
    """Configs, model.py files and their core around ONNX graphs already at ``<repo>/<component>/1/model.onnx``.

    ``placement`` defaults to this host's cores: ``ensure_repository`` rewrites the configs at every
    start, so a preset follows the machine that serves it.
    """
    placement = placement or CpuPlacement.for_this_host()
    for name, spec in deployment.specs().items():
        write_config(repository, component_config(spec, instances=placement.component_instances))
        place_python_model(repository, name, ORT_TEMPLATE)
    write_config(repository, bls_config(deployment, instances=placement.bls_instances))
    place_python_model(repository, BLS_MODEL, BLS_TEMPLATE)
