"""Random-weight checkpoints with the real architectures, written in the real on-disk formats.

A preset is only a set of checkpoint folders; everything downstream (loading, export, serving)
reads them back through the same code a real SD1.5 / student / ImageReward checkpoint takes.

- ``tiny``: seconds to export; 16x16 latents, 128x128 images. The CI and ``make demo`` default.
- ``small``: the real SD1.5 block structure at reduced width (UNet 64/128/256/256, 32x32
  latents), so component compute dominates the serving overhead as it does on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from export.tokenizers import write_clip_tokenizer

# SD1.5's noise schedule; every scheduler of the teacher and the student derives from it.
SD15_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
)
VAE_SCALING_FACTOR = 0.18215


@dataclass(frozen=True)
class PresetConfig:
    unet_channels: tuple[int, ...]
    unet_heads: int
    latent_size: int
    text_hidden: int
    text_layers: int
    vae_channels: tuple[int, ...]


PRESETS = {
    "tiny": PresetConfig(unet_channels=(32, 32, 64, 64), unet_heads=8, latent_size=16, text_hidden=32, text_layers=2, vae_channels=(32, 32, 64, 64)),
    "small": PresetConfig(unet_channels=(64, 128, 256, 256), unet_heads=8, latent_size=32, text_hidden=64, text_layers=2, vae_channels=(32, 64, 64, 64)),
}


def _unet(cfg: PresetConfig, seed: int, time_cond_proj_dim: int | None = None):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=cfg.unet_channels,
        layers_per_block=1,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.unet_heads,
        norm_num_groups=32,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def _scale_out_init(module: torch.nn.Module, gain: float) -> None:
    # Random init leaves the UNet's output near zero and the VAE's output near grey; a little
    # gain makes the images (and so the ImageReward scores) differ visibly between seeds.
    for p in module.parameters():
        p.data.mul_(gain)


def write_teacher(directory: Path, preset: str = "tiny", seed: int = 0) -> Path:
    """An SD1.5-architecture diffusers pipeline folder (safetensors weights, real tokenizer)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg = PRESETS[preset]
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=cfg.text_hidden,
            intermediate_size=cfg.text_hidden * 4,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=cfg.text_hidden,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=1,
        )
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=cfg.latent_size * 2 ** (len(cfg.vae_channels) - 1),
        scaling_factor=VAE_SCALING_FACTOR,
    )
    unet = _unet(cfg, seed + 2)
    tokenizer_dir = write_clip_tokenizer(directory / "_tokenizer_src")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=unet,
        # SD1.5 ships a PNDM config; the serving solver is built from its schedule.
        scheduler=PNDMScheduler.from_config({**SD15_SCHEDULE, "skip_prk_steps": True}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    for f in tokenizer_dir.iterdir():
        f.unlink()
    tokenizer_dir.rmdir()
    return directory


def write_cd_student(directory: Path, preset: str = "tiny", seed: int = 100) -> Path:
    """A full distilled UNet (the paper's CD-SD1.5 layout): ``unet/`` plus its sampler config."""
    from diffusers import LCMScheduler

    unet = _unet(PRESETS[preset], seed)
    _scale_out_init(unet.conv_out, 4.0)
    unet.save_pretrained(directory / "unet", safe_serialization=True)
    LCMScheduler.from_config(SD15_SCHEDULE).save_pretrained(directory / "scheduler")
    return directory


def write_preset(root: Path, preset: str = "tiny") -> dict[str, Path]:
    """Write teacher, student and ImageReward checkpoints under ``root``; return their paths."""
    from export.image_reward import CONFIG_NAME, write_tiny_image_reward

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    root.mkdir(parents=True, exist_ok=True)
    reward = write_tiny_image_reward(root / "reward")
    return {
        "teacher": write_teacher(root / "teacher", preset),
        "student": write_cd_student(root / "student", preset),
        "reward": reward,
        "reward_config": reward.with_name(CONFIG_NAME),
    }
