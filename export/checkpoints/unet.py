"""Diffusers UNet folders, loaded strictly: what ``from_pretrained`` would only warn about is an error."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from export.checkpoints.errors import SourceError, first_sentence, keys_preview

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

logger = logging.getLogger(__name__)


def load_unet_folder(unet_dir: Path, what: str) -> "UNet2DConditionModel":
    """A diffusers UNet folder, refusing what ``from_pretrained`` would only warn about.

    diffusers fills weights missing from the checkpoint with random values and just logs it; an
    export of such a UNet would serve noise, so missing or mismatched weights are errors here.
    """
    from diffusers import UNet2DConditionModel

    if not (unet_dir / "config.json").is_file():
        raise SourceError(f"{what}: no UNet config.json in {unet_dir}")
    try:
        unet, info = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise SourceError(f"{what}: cannot load the UNet in {unet_dir}: {first_sentence(err)}") from err
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise SourceError(f"{what}: {unet_dir} lacks {len(missing)} weight(s) its config.json needs: {keys_preview(missing)}")
    mismatched = [f"{k} {tuple(got)} != {tuple(want)}" for k, got, want in info.get("mismatched_keys") or []]
    if mismatched:
        raise SourceError(f"{what}: {unet_dir} has weights of the wrong shape: {keys_preview(mismatched)}")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        logger.warning("%s: %s carries %d weight(s) the UNet does not use: %s", what, unet_dir, len(unexpected), keys_preview(unexpected))
    return unet.eval()


def full_unet_dir(path: Path) -> Path:
    """The UNet folder of a student given as a UNet folder or as a folder holding ``unet/``."""
    if not path.exists():
        raise SourceError(f"student: {path} does not exist")
    if path.is_file():
        hint = "; a LoRA takes --student-kind lcm-lora, hyper-sd or flash" if path.suffix == ".safetensors" else ""
        raise SourceError(f"student: {path} is a file, but a full-UNet student is a diffusers folder (config.json + weights, or unet/){hint}")
    if (path / "unet" / "config.json").is_file():
        return path / "unet"
    if (path / "config.json").is_file():
        return path
    if any(path.glob("*.safetensors")):
        raise SourceError(f"student: {path} holds a .safetensors file but no UNet config.json; a LoRA needs --student-kind lcm-lora, hyper-sd or flash")
    raise SourceError(f"student: no UNet config.json in {path} or {path / 'unet'}")


def load_full_unet(path: Path) -> "UNet2DConditionModel":
    """A diffusers UNet folder, or a student folder holding one under ``unet/``."""
    return load_unet_folder(full_unet_dir(path), "student")

