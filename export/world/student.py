"""Stage 4: the student, a latent consistency model distilled from the teacher (LCM, Luo et al. 2023).

Served through the existing ``lcm`` student kind, so the student's guidance enters as LCM's
w-embedding (``time_cond_proj_dim``) while the teacher runs true classifier-free guidance, and
the served ``guidance_scale`` g means the same for both (w = g - 1, as diffusers' LCM pipeline).

Each step follows LCM's Algorithm 1 (and diffusers' ``train_lcm_distill_sd_wds.py``):
1. a training latent is noised to ``t_{n+k}``, a point of the 50-step DDIM grid (k = 20);
2. the teacher, guided with w ~ U[w_min, w_max] in LCM's form ``cond + w (cond - uncond)``, takes one
   DDIM step from ``t_{n+k}`` to ``t_n``;
3. the student's consistency function at ``t_{n+k}`` is pulled towards the target network's at
   ``t_n`` (pseudo-Huber loss); the target is an EMA (0.95) of the student.
The consistency function is LCMScheduler's ``c_skip x + c_out x0(eps)`` with timestep scaling 10,
so the served sampler (``LCMScheduler``) reads the distilled model exactly as it was trained.
The student starts as a copy of the teacher with a zero guidance projection.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from export.checkpoints.presets import SD15_SCHEDULE
from export.world.components import build_unet, noise_scheduler
from export.world.config import WorldConfig
from export.world.latents import load_latents
from export.world.teacher import CaptionTable
from export.world.training import Clock, LossMeter, StageDir, clipped_step, configure_torch, cosine_lr, progress, set_lr
from export.world.vae import step_rng

STAGE = "student"
TIMESTEP_SCALING = 10.0  # LCMScheduler's default; the boundary scalings must match the served sampler
SIGMA_DATA = 0.5


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LCMScheduler.get_scalings_for_boundary_condition_discrete, per row, shaped [B, 1, 1, 1]."""
    scaled = TIMESTEP_SCALING * t.float()
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def ddim_grid(num_train: int, steps: int) -> torch.Tensor:
    """LCM's skipping-step grid: t = 19, 39, ..., 999 for 50 of 1000 steps."""
    ratio = num_train // steps
    return torch.arange(1, steps + 1) * ratio - 1


def _bcast(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return values[t].view(-1, 1, 1, 1)


def predicted_x0(eps: torch.Tensor, t: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a = _bcast(alpha_bar, t)
    return (sample - (1 - a).sqrt() * eps) / a.sqrt()


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    from bll_python.pipeline import guidance_embedding as served_embedding

    # The very function the serving pipeline embeds w with.
    return served_embedding(w, dim)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    return (torch.sqrt((a - b) ** 2 + c**2) - c).mean()


def train_student(cfg: WorldConfig, work: Path, out: Path, *, resume: bool = True, show: bool = True, threads: int = 2) -> dict[str, Any]:
    from diffusers import LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    configure_torch(threads)
    stage = StageDir(work, STAGE)
    sc = cfg.student
    teacher_dir = out / "teacher"
    teacher = UNet2DConditionModel.from_pretrained(teacher_dir / "unet").eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(teacher_dir / "text_encoder").eval()
    data = load_latents(work)
    n, latent_shape, sf = len(data["captions"]), data["mean"].shape[1:], data["scaling_factor"]
    table = CaptionTable(data["captions"], CLIPTokenizer.from_pretrained(teacher_dir / "tokenizer"))
    caption_rows = table.rows(data["captions"])
    with torch.no_grad():
        embeddings = torch.cat([text_encoder(table.ids[i : i + 256])[0] for i in range(0, len(table.ids), 256)])
    uncond = embeddings[0]

    student = build_unet(cfg.unet, latent_shape[-1], cfg.text.hidden, time_cond_proj_dim=sc.time_cond_proj_dim)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("time_embedding.cond_proj") for k in missing), (missing, unexpected)
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)  # starts as the teacher for every w
    target = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=sc.lr, weight_decay=0.0, fused=True)
    scheduler = noise_scheduler()
    alpha_bar = scheduler.alphas_cumprod
    grid = ddim_grid(scheduler.config.num_train_timesteps, sc.ddim_steps)
    skip = scheduler.config.num_train_timesteps // sc.ddim_steps

    clock, start = Clock(), 0
    state = stage.load_state() if resume else None
    if state:
        student.load_state_dict(state["student"])
        target.load_state_dict(state["target"])
        optimizer.load_state_dict(state["optimizer"])
        clock.wall, clock.cpu, start = state["wall"], state["cpu"], state["step"]

    student.train()
    bar = progress(sc.steps, start, "student (LCM)", show)
    meter = LossMeter(bar, digits=5)
    for step in range(start, sc.steps):
        rng = step_rng(cfg.seed, STAGE, step)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        b = sc.batch
        idx = torch.from_numpy(rng.integers(n, size=b))
        context = embeddings[caption_rows[idx]]
        x0 = (data["mean"][idx] + data["std"][idx] * torch.randn(b, *latent_shape, generator=gen)) * sf
        index = torch.randint(0, sc.ddim_steps, (b,), generator=gen)
        t_start = grid[index]
        t_end = (t_start - skip).clamp(min=0)
        noisy = scheduler.add_noise(x0, torch.randn(x0.shape, generator=gen), t_start)
        w = sc.w_min + (sc.w_max - sc.w_min) * torch.rand(b, generator=gen)
        w_emb = guidance_embedding(w, sc.time_cond_proj_dim)

        # 1. The student's consistency function at t_{n+k}.
        c_skip_start, c_out_start = boundary_scalings(t_start)
        eps = student(noisy, t_start, context, timestep_cond=w_emb).sample
        prediction = c_skip_start * noisy + c_out_start * predicted_x0(eps, t_start, noisy, alpha_bar)

        with torch.no_grad():
            # 2. One guided DDIM step of the teacher, t_{n+k} -> t_n (LCM's CFG form, w as sampled).
            eps_u, eps_c = teacher(torch.cat([noisy, noisy]), torch.cat([t_start, t_start]), torch.cat([uncond.expand(b, -1, -1), context])).sample.chunk(2)
            x0_u, x0_c = predicted_x0(eps_u, t_start, noisy, alpha_bar), predicted_x0(eps_c, t_start, noisy, alpha_bar)
            wv = w.view(-1, 1, 1, 1)
            guided_x0 = x0_c + wv * (x0_c - x0_u)
            guided_eps = eps_c + wv * (eps_c - eps_u)
            a_end = _bcast(alpha_bar, t_end)
            x_end = a_end.sqrt() * guided_x0 + (1 - a_end).sqrt() * guided_eps
            # 3. The target network's consistency function at t_n.
            c_skip, c_out = boundary_scalings(t_end)
            target_eps = target(x_end, t_end, context, timestep_cond=w_emb).sample
            goal = c_skip * x_end + c_out * predicted_x0(target_eps, t_end, x_end, alpha_bar)

        loss = pseudo_huber(prediction, goal, sc.huber_c)
        set_lr(optimizer, cosine_lr(step, sc.steps, sc.lr))
        clipped_step(optimizer, loss, student.parameters())
        with torch.no_grad():
            for p_t, p_s in zip(target.parameters(), student.parameters()):
                p_t.lerp_(p_s, 1 - sc.ema_decay)
        meter.update(loss)
        stage.snapshot_if_due(step + 1, sc.steps, cfg.checkpoint_every, clock, lambda: {"student": student.state_dict(), "target": target.state_dict(), "optimizer": optimizer.state_dict()})
    bar.close()

    folder = out / "student"
    copy.deepcopy(target).to(torch.float16).save_pretrained(folder / "unet", safe_serialization=True)
    # LCM_Dreamshaper_v7's layout: the sampler the model was distilled for ships next to it.
    LCMScheduler.from_config(SD15_SCHEDULE).save_pretrained(folder / "scheduler")
    return stage.finish(clock, steps=sc.steps, final_loss=meter.value, w_range=[sc.w_min, sc.w_max])
