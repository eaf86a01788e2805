"""Where things live inside a generated model repository (one layout for every runtime)."""

from __future__ import annotations

import re
from pathlib import Path

_PARAMETER = re.compile(r'parameters\s*\{\s*key:\s*"(\w+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"\s*\}\s*\}')

BLS_MODEL = "adaptive_diffusion"
VERSION = "1"


def model_dir(repository: Path, name: str) -> Path:
    return Path(repository) / name


def version_dir(repository: Path, name: str) -> Path:
    return model_dir(repository, name) / VERSION


def onnx_path(repository: Path, name: str) -> Path:
    return version_dir(repository, name) / "model.onnx"


def plan_path(repository: Path, name: str) -> Path:
    return version_dir(repository, name) / "model.plan"


def assets_dir(repository: Path) -> Path:
    """Deployment manifest and tokenizer files; they travel with the BLS model."""
    return version_dir(repository, BLS_MODEL) / "assets"


def clip_tokenizer_dir(repository: Path) -> Path:
    return assets_dir(repository) / "clip_tokenizer"


def reward_vocab(repository: Path) -> Path:
    return assets_dir(repository) / "reward_tokenizer" / "vocab.txt"


def component_parameters(repository: Path, name: str) -> dict[str, str]:
    """The ``parameters`` block of a model's ``config.pbtxt`` (empty when it has none)."""
    config = model_dir(repository, name) / "config.pbtxt"
    return dict(_PARAMETER.findall(config.read_text())) if config.is_file() else {}
