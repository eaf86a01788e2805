"""Stage 1: an ``AutoencoderKL`` (SD's VAE class, 8x downsampling) trained on renders of training captions.

SD's VAE was trained with a perceptual and a GAN loss; flat shapes need neither, so the loss is L1 +
L2 reconstruction plus SD's tiny KL weight. Afterwards the latent scaling factor is measured the way
SD's 0.18215 was: one over the standard deviation of encoded latents (of 256 renders of held-out
captions, which also give the reported reconstruction error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from export.world.config import VaeConfig, WorldConfig
from export.world.grammar import splits
from export.world.render import render_caption
from export.world.training import CaptionSampler, Clock, LossMeter, StageDir, clipped_step, configure_torch, cosine_lr, progress, set_lr

STAGE = "vae"


def build_vae(cfg: VaeConfig, image_size: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.channels),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.channels),
        block_out_channels=cfg.channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_groups,
        sample_size=image_size,
    )


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1], SD's VAE input convention."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def render_batch(sampler: CaptionSampler, n: int, rng: np.random.Generator, size: int) -> tuple[list[str], np.ndarray]:
    captions = sampler.draw(n)
    return [c.text for c in captions], np.stack([render_caption(c, rng, size) for c in captions])


def step_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    """The data of step ``step`` depends only on (seed, stage, step), so a resumed run sees the same batches."""
    return np.random.default_rng([seed, sum(map(ord, stage)), step])


@torch.no_grad()
def measure_scaling_factor(vae: Any, images: torch.Tensor, batch: int = 64) -> float:
    latents = torch.cat([vae.encode(images[i : i + batch]).latent_dist.sample() for i in range(0, len(images), batch)])
    return float(1.0 / latents.flatten().std())


def train_vae(cfg: WorldConfig, work: Path, out: Path, *, resume: bool = True, show: bool = True, threads: int = 2) -> dict[str, Any]:
    """Train, measure the scaling factor, write ``out/teacher/vae`` (a diffusers folder). Returns the stage report."""
    configure_torch(threads)
    stage = StageDir(work, STAGE)
    vc = cfg.vae
    torch.manual_seed(cfg.seed)
    vae = build_vae(vc, cfg.image_size)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=vc.lr, weight_decay=0.0, fused=True)
    clock, start = Clock(), 0
    state = stage.load_state() if resume else None
    if state:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        clock.wall, clock.cpu, start = state["wall"], state["cpu"], state["step"]
    sampler = CaptionSampler(splits().train, np.random.default_rng(cfg.seed))
    vae.train()
    bar = progress(vc.steps, start, "vae", show)
    meter = LossMeter(bar)
    for step in range(start, vc.steps):
        rng = step_rng(cfg.seed, STAGE, step)
        sampler.rng = rng
        _, images = render_batch(sampler, vc.batch, rng, cfg.image_size)
        x = to_model_range(images)
        set_lr(optimizer, cosine_lr(step, vc.steps, vc.lr))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + vc.kl_weight * posterior.kl().mean()
        clipped_step(optimizer, loss, vae.parameters())
        meter.update(loss)
        stage.snapshot_if_due(step + 1, vc.steps, cfg.checkpoint_every, clock, lambda: {"model": vae.state_dict(), "optimizer": optimizer.state_dict()})
    bar.close()

    vae.eval()
    rng = np.random.default_rng([cfg.seed, 7])
    held = CaptionSampler(splits().heldout, rng)
    _, images = render_batch(held, 256 if vc.steps > 10 else 8, rng, cfg.image_size)
    x = to_model_range(images)
    scaling = measure_scaling_factor(vae, x)
    vae.register_to_config(scaling_factor=scaling)
    with torch.no_grad():
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
    mse = float(F.mse_loss(recon.clamp(-1, 1), x))
    save_half(vae, out / "teacher" / "vae")
    return stage.finish(clock, steps=vc.steps, final_loss=meter.value, scaling_factor=scaling, heldout_recon_mse=mse)


def save_half(model: Any, folder: Path) -> None:
    """Save in float16 safetensors (half the bytes in git); diffusers and transformers load it as float32."""
    import copy

    copy.deepcopy(model).to(torch.float16).save_pretrained(folder, safe_serialization=True)
