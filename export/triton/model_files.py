"""What sits next to a ``config.pbtxt``: the Python model templates and the core they import.

Every Python model's version folder carries its own copy of ``bll_python`` (as TensorRT-LLM's BLS
ships its ``lib/`` inside the model folder): the Python backend puts that folder on ``sys.path``, so
a stock Triton container serves the repository with only the Python dependencies installed, and
the served code is the code the repository was written with. Models without a ``model.py`` (plans
in Triton's TensorRT backend) carry neither.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import bll_python
from bll_python.layout import BLS_MODEL, version_dir

TEMPLATES = Path(__file__).resolve().parents[2] / "model_repository"
ORT_TEMPLATE = TEMPLATES / "onnxruntime_component" / "model.py"
TRT_TEMPLATE = TEMPLATES / "tensorrt_component" / "model.py"
BLS_TEMPLATE = TEMPLATES / BLS_MODEL / "1" / "model.py"
CORE = Path(bll_python.__file__).resolve().parent
CORE_NAME = CORE.name


def place_python_model(repository: Path, name: str, template: Path) -> None:
    """``<name>/1/model.py`` from ``template``, and the core it imports beside it (replacing older copies)."""
    version = version_dir(repository, name)
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, version / "model.py")
    shutil.rmtree(version / CORE_NAME, ignore_errors=True)
    shutil.copytree(CORE, version / CORE_NAME, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def remove_python_model(repository: Path, name: str) -> None:
    """Drop a Python model left from another flavour: a stale one next to a plan would only confuse whoever reads the folder."""
    version = version_dir(repository, name)
    target = version / "model.py"
    if target.is_file() and target.read_bytes() in (ORT_TEMPLATE.read_bytes(), TRT_TEMPLATE.read_bytes()):
        target.unlink()
        shutil.rmtree(version / CORE_NAME, ignore_errors=True)
