"""Checkpoint arguments that name a Hugging Face Hub repository instead of a local path.

A local path is used as it is. A hub id (``org/name``, or ``org/name/file.safetensors`` for one
file) comes from the local hub cache when it is there, else is downloaded (only the files the
export reads) when the hub answers; when it does not, the error says so at once and asks for a
local path, instead of a download that hangs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from export.checkpoints.errors import SourceError

HUB_TIMEOUT_S = 3.0
# org/name, optionally followed by a file path inside the repository.
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*)(?:/(?P<file>[\w.\-/]+))?")

# The files of a diffusers SD1.5 pipeline the export reads; the hub repositories also hold
# .ckpt/.bin/fp16/non-EMA copies worth gigabytes that it never needs.
TEACHER_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    # SDXL's second text tower (absent from SD1.5 repositories, so these match nothing there).
    "tokenizer_2/*",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
]
# SDXL-Refiner: the img2img pipeline's UNet, second tower (checked equal to the base's) and schedule.
REFINER_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
]
# A distilled UNet published as a pipeline (unet/ + scheduler/) or as a bare UNet folder.
FULL_STUDENT_FILES = ["unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json", "config.json", "diffusion_pytorch_model.safetensors"]
REWARD_FILE = "ImageReward.pt"  # THUDM/ImageReward


class HubUnavailable(SourceError):
    """A hub id was given but the Hugging Face Hub cannot be reached (or HF_HUB_OFFLINE is set)."""


def _offline_reason() -> str | None:
    """Why the hub cannot be used right now, or None if it answers."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"} or constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_TIMEOUT_S)
    except urllib.error.HTTPError:
        return None  # the server answered, even if not with 200
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"{endpoint} did not answer within {HUB_TIMEOUT_S:g} s ({reason})"
    return None


def _hub_fetch(repo: str, file: str | None, patterns: list[str] | None, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    if file is not None:
        return Path(hf_hub_download(repo, file, local_files_only=local_only, etag_timeout=10))
    return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=local_only, etag_timeout=10))


def resolve_source(value: str, flag: str, *, file: str | None = None, patterns: list[str] | None = None) -> Path:
    """A local path as is; a hub id downloaded (only the files named) when the hub answers.

    ``file`` is the default file to fetch from a repository id without a file part (a LoRA, the
    ImageReward checkpoint); ``patterns`` limit a folder snapshot (a pipeline, a UNet).
    """
    path = Path(value).expanduser()
    if path.exists():
        return path
    match = HUB_ID.fullmatch(value)
    if match is None or value.startswith((".", "/", "~")):
        raise SourceError(f"{flag}: {value} does not exist")
    repo, file = match["repo"], match["file"] or file
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    reason = _offline_reason()
    try:
        # A copy already in the local hub cache needs no network, so try it first either way.
        return _hub_fetch(repo, file, patterns, local_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    if reason is not None:
        what = f"{repo}/{file}" if file else repo
        raise HubUnavailable(
            f"{flag} {value}: not a local path, and fetching it from the Hugging Face Hub is impossible: the hub is unreachable "
            f"({reason}). Download {what} on a machine with access and pass the local path."
        )
    try:
        return _hub_fetch(repo, file, patterns, local_only=False)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        raise SourceError(f"{flag} {value}: not a local path, and the hub could not provide it: {' '.join(str(err).split())[:300]}") from err
