"""Where things live inside a generated model repository (one layout for every runtime), and reading them back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BLS_MODEL = "adaptive_diffusion"
VERSION = "1"
CONFIG_FILE = "config.pbtxt"
# The tritonserver flags a repository needs (the TensorRT writer's CUDA pool); the launcher passes them.
SERVER_ARGS_FILE = "tritonserver_args.json"


def model_dir(repository: Path, name: str) -> Path:
    return Path(repository) / name


def version_dir(repository: Path, name: str) -> Path:
    return model_dir(repository, name) / VERSION


def config_path(repository: Path, name: str) -> Path:
    return model_dir(repository, name) / CONFIG_FILE


def onnx_path(repository: Path, name: str) -> Path:
    return version_dir(repository, name) / "model.onnx"


def plan_path(repository: Path, name: str) -> Path:
    return version_dir(repository, name) / "model.plan"


def assets_dir(repository: Path) -> Path:
    """Deployment manifest and tokenizer files; they travel with the BLS model."""
    return version_dir(repository, BLS_MODEL) / "assets"


def clip_tokenizer_dir(repository: Path) -> Path:
    return assets_dir(repository) / "clip_tokenizer"


def clip_tokenizer_2_dir(repository: Path) -> Path:
    """SDXL's second tokenizer (OpenCLIP's padding); absent for SD1.5."""
    return assets_dir(repository) / "clip_tokenizer_2"


def reward_vocab(repository: Path) -> Path:
    return assets_dir(repository) / "reward_tokenizer" / "vocab.txt"


def read_model_config(repository: Path, name: str) -> Any:
    """A model's ``config.pbtxt`` as Triton's ``ModelConfig`` protobuf.

    tritonclient ships the generated proto; it is imported here, not at module load, so the BLS
    (which never reads configs) needs neither it nor protobuf.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(config_path(repository, name).read_text(), model_config_pb2.ModelConfig())


def component_parameters(repository: Path, name: str) -> dict[str, str]:
    """The ``parameters`` of a model's ``config.pbtxt`` (empty when it has no config)."""
    if not config_path(repository, name).is_file():
        return {}
    return {key: value.string_value for key, value in read_model_config(repository, name).parameters.items()}


def read_server_args(repository: Path) -> list[str]:
    """The tritonserver flags ``repository`` was written for ([] when it records none)."""
    path = assets_dir(repository) / SERVER_ARGS_FILE
    return list(json.loads(path.read_text())["server_args"]) if path.is_file() else []
