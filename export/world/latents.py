"""Stage 2: render the teacher's training set once and encode it with the trained VAE.

The UNets train on latents, as SD's did; encoding each image once (keeping the posterior's mean and
std, so every epoch still samples a fresh latent) costs far less than encoding every batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.world.config import WorldConfig
from export.world.grammar import splits
from export.world.training import CaptionSampler, Clock, StageDir, configure_torch, progress
from export.world.vae import render_batch, to_model_range

STAGE = "latents"
CHUNK = 256


def latents_file(work: Path) -> Path:
    return Path(work) / STAGE / "latents.pt"


def load_latents(work: Path) -> dict[str, Any]:
    """``{"captions": [str], "mean": [N, 4, h, w], "std": [N, 4, h, w], "scaling_factor": float}``."""
    return torch.load(latents_file(work), map_location="cpu", weights_only=True)


def encode_dataset(cfg: WorldConfig, work: Path, out: Path, *, resume: bool = True, show: bool = True, threads: int = 2) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    configure_torch(threads)
    stage = StageDir(work, STAGE)
    clock = Clock()
    vae = AutoencoderKL.from_pretrained(out / "teacher" / "vae").eval()
    rng = np.random.default_rng([cfg.seed, 2])
    sampler = CaptionSampler(splits().train, rng)
    captions: list[str] = []
    means, stds = [], []
    total = cfg.teacher.images
    bar = progress(total, 0, "render + encode", show)
    with torch.no_grad():
        for start in range(0, total, CHUNK):
            texts, images = render_batch(sampler, min(CHUNK, total - start), rng, cfg.image_size)
            dist = vae.encode(to_model_range(images)).latent_dist
            captions += texts
            means.append(dist.mean.clone())
            stds.append(dist.std.clone())
            bar.update(len(texts))
    bar.close()
    data = {"captions": captions, "mean": torch.cat(means), "std": torch.cat(stds), "scaling_factor": float(vae.config.scaling_factor)}
    torch.save(data, latents_file(work))
    return stage.finish(clock, images=total, latent_shape=list(data["mean"].shape[1:]))
