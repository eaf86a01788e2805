"""Stage 3: the teacher, an SD1.5-architecture UNet trained with its text encoder on the world's latents.

As SD1.5: epsilon prediction on the scaled-linear 1000-step schedule, caption dropout (the empty
prompt) so that classifier-free guidance has an unconditional model. The loss is weighted by
min-SNR-gamma, which only reweights timesteps (the model still predicts epsilon); its authors report
~3x faster convergence, and compute is what this CPU-trained world is short of. Unlike SD1.5 the text encoder
trains too, at a lower rate: there is no pretrained CLIP here, and a random one would leave the
UNet to untangle colour-shape binding from arbitrary features alone. The published weights are the
exponential moving average of both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from export.world.components import build_text_encoder, build_unet, clip_tokenizer, noise_scheduler, tokenize, write_teacher_folder
from export.world.config import WorldConfig
from export.world.latents import load_latents
from export.world.training import Clock, LossMeter, StageDir, clipped_step, configure_torch, cosine_lr, progress, set_lr
from export.world.vae import step_rng

STAGE = "teacher"


class CaptionTable:
    """Token ids of every distinct caption (plus the empty prompt at row 0), looked up by row."""

    def __init__(self, captions: list[str], tokenizer: Any) -> None:
        self.texts = [""] + sorted(set(captions))
        self.row = {t: i for i, t in enumerate(self.texts)}
        self.ids = tokenize(tokenizer, self.texts)

    def rows(self, captions: list[str]) -> torch.Tensor:
        return torch.tensor([self.row[c] for c in captions])


def min_snr_weights(scheduler: Any, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, gamma) / SNR per sample: epsilon-prediction's min-SNR-gamma weighting (Hang et al. 2023)."""
    alpha_bar = scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr


def _ema(params: list[torch.nn.Parameter], decay: float):
    from diffusers.training_utils import EMAModel

    # Warm-up lets the average follow the fast early progress; the decay caps it at ``decay``.
    return EMAModel(params, decay=decay, use_ema_warmup=True, power=0.75)


def train_teacher(cfg: WorldConfig, work: Path, out: Path, *, resume: bool = True, show: bool = True, threads: int = 2) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    configure_torch(threads)
    stage = StageDir(work, STAGE)
    tc = cfg.teacher
    data = load_latents(work)
    n, latent_shape, sf = len(data["captions"]), data["mean"].shape[1:], data["scaling_factor"]
    table = CaptionTable(data["captions"], clip_tokenizer())
    caption_rows = table.rows(data["captions"])

    torch.manual_seed(cfg.seed)
    text_encoder = build_text_encoder(cfg.text)
    unet = build_unet(cfg.unet, latent_shape[-1], cfg.text.hidden)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": list(unet.parameters()), "lr_scale": 1.0}, {"params": list(text_encoder.parameters()), "lr_scale": tc.text_lr / tc.lr}],
        lr=tc.lr,
        weight_decay=0.0,
        fused=True,
    )
    ema = _ema(params, tc.ema_decay)
    scheduler = noise_scheduler()
    clock, start = Clock(), 0
    state = stage.load_state() if resume else None
    if state:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        clock.wall, clock.cpu, start = state["wall"], state["cpu"], state["step"]

    unet.train()
    text_encoder.train()
    bar = progress(tc.steps, start, "teacher", show)
    meter = LossMeter(bar, decay=0.99)
    for step in range(start, tc.steps):
        rng = step_rng(cfg.seed, STAGE, step)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        idx = torch.from_numpy(rng.integers(n, size=tc.batch))
        rows = torch.where(torch.from_numpy(rng.random(tc.batch) < tc.caption_dropout), 0, caption_rows[idx])
        x0 = (data["mean"][idx] + data["std"][idx] * torch.randn(tc.batch, *latent_shape, generator=gen)) * sf
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (tc.batch,), generator=gen)
        noisy = scheduler.add_noise(x0, noise, t)

        set_lr(optimizer, cosine_lr(step, tc.steps, tc.lr))
        context = text_encoder(table.ids[rows])[0]
        per_sample = F.mse_loss(unet(noisy, t, context).sample, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(scheduler, t, tc.snr_gamma)).mean()
        clipped_step(optimizer, loss, params)
        ema.step(params)
        meter.update(loss)
        stage.snapshot_if_due(
            step + 1,
            tc.steps,
            cfg.checkpoint_every,
            clock,
            lambda: {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state_dict()},
        )
    bar.close()

    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    vae = AutoencoderKL.from_pretrained(out / "teacher" / "vae")
    write_teacher_folder(out / "teacher", vae, text_encoder, unet)
    return stage.finish(clock, steps=tc.steps, final_loss=meter.value, unet_parameters=sum(p.numel() for p in unet.parameters()))

