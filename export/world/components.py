"""The world's models, built from the SD1.5 architecture classes at a small width.

The text encoder is transformers' ``CLIPTextModel`` behind the real CLIP BPE tokenizer (77 tokens),
the UNet diffusers' ``UNet2DConditionModel`` with SD1.5's cross-attention blocks; only widths and
depth differ. Written as SD1.5 is (a ``StableDiffusionPipeline`` folder), they are read back by the
same loaders as a downloaded checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from export.checkpoints.presets import SD15_SCHEDULE
from export.checkpoints.tokenizers import CLIP_MAX_LENGTH, write_clip_tokenizer
from export.world.config import TextConfig, UNetConfig


def build_text_encoder(cfg: TextConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=cfg.hidden,
            intermediate_size=cfg.hidden * 4,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            max_position_embeddings=CLIP_MAX_LENGTH,
            projection_dim=cfg.hidden,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=1,
        )
    )


def clip_tokenizer():
    """The real CLIP tokenizer (ids equal openai/clip-vit-large-patch14's), from the project's assets."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tmp)))


def build_unet(cfg: UNetConfig, latent_size: int, cross_attention_dim: int, time_cond_proj_dim: int | None = None):
    """SD1.5's block layout, one level shorter: 8x8 latents go down to 2x2, not 64x64 to 8x8."""
    from diffusers import UNet2DConditionModel

    levels = len(cfg.channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        block_out_channels=cfg.channels,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.heads,
        norm_num_groups=cfg.norm_groups,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def noise_scheduler():
    """SD1.5's training schedule: 1000 scaled-linear steps, epsilon prediction."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample", "steps_offset")
    return DDPMScheduler(**{k: SD15_SCHEDULE[k] for k in keys}, prediction_type="epsilon")


def tokenize(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="pt").input_ids


def write_teacher_folder(folder: Path, vae: Any, text_encoder: Any, unet: Any) -> Path:
    """An SD1.5-layout pipeline folder (model_index.json, vae, text_encoder, tokenizer, unet, scheduler),
    weights in float16 safetensors (loaders read them back as float32)."""
    import copy

    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).to(torch.float16),
        text_encoder=copy.deepcopy(text_encoder).to(torch.float16),
        tokenizer=clip_tokenizer(),
        unet=copy.deepcopy(unet).to(torch.float16),
        # SD1.5 ships a PNDM config; serving builds its solvers from the schedule in it.
        scheduler=PNDMScheduler.from_config({**SD15_SCHEDULE, "skip_prk_steps": True}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
