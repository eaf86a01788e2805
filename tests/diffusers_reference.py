"""What diffusers' own pipelines produce on the tiny weights: the reference for in-process and served.

Seeds follow diffusers: one ``torch.Generator("cpu").manual_seed(seed)`` per row. The student run
leaves each row's generator where the refinement noise continues from, so ``refine`` hands the same
generators to ``StableDiffusionImg2ImgPipeline`` (``image`` = the student latent, ``strength`` = sigma).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import diffusers
from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from transformers import CLIPTokenizer

from bll_python.pipeline import refine_schedule_length
from bll_python.settings import GenerationSettings


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """diffusers' ``numpy_to_pil`` rounding, for [B, H, W, 3] floats in [0, 1]."""
    return (images * 255).round().clip(0, 255).astype(np.uint8)


def tiny_pipeline(cls: type, tiny_models, unet: str, scheduler):
    """diffusers' pipeline ``cls`` over the tiny preset's VAE, text encoder and tokenizer, with its UNet ``unet``."""
    raw = tiny_models.raw
    return cls(
        vae=raw["vae"],
        text_encoder=raw["text_encoder"],
        tokenizer=CLIPTokenizer.from_pretrained(tiny_models.tokenizer_dir),
        unet=raw[unet],
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to("cpu")


@dataclass
class Reference:
    latents: torch.Tensor  # [B, C, h, w]
    images: np.ndarray  # float [B, H, W, 3] in [0, 1]

    @property
    def uint8(self) -> np.ndarray:
        return to_uint8(self.images)


class DiffusersReference:
    """``student``, ``teacher`` and ``refine`` as diffusers computes them, with or without negative prompts."""

    def __init__(self, tiny_models, deployment) -> None:
        def pipe(cls, unet: str, scheduler):
            return tiny_pipeline(cls, tiny_models, unet, scheduler)

        self.student_pipe = pipe(StableDiffusionPipeline, "unet_student", LCMScheduler.from_config(deployment.student_scheduler.config))
        # The deployment's teacher solver (DPM-Solver++ 2M unless exported with --teacher-sampler), by its diffusers class.
        teacher = getattr(diffusers, deployment.teacher_scheduler.cls)
        self.teacher_pipe = pipe(StableDiffusionPipeline, "unet_teacher", teacher.from_config(deployment.teacher_scheduler.config))
        self.img2img_pipe = pipe(StableDiffusionImg2ImgPipeline, "unet_teacher", teacher.from_config(deployment.teacher_scheduler.config))
        self.vae = tiny_models.raw["vae"]

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        # What the pipelines do after the loop for output_type="np".
        image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        return self.student_pipe.image_processor.postprocess(image, output_type="np")

    @torch.no_grad()
    def student(self, prompts: Sequence[str], seeds: Sequence[int], s: GenerationSettings, negative: Sequence[str] | None = None, gens=None) -> Reference:
        gens = gens if gens is not None else generators(seeds)
        latents = self.student_pipe(
            list(prompts), negative_prompt=_negative(negative), num_inference_steps=s.student_steps, guidance_scale=s.guidance_scale, generator=gens, output_type="latent"
        ).images
        return Reference(latents, self._decode(latents))

    @torch.no_grad()
    def teacher(self, prompts: Sequence[str], seeds: Sequence[int], s: GenerationSettings, negative: Sequence[str] | None = None) -> Reference:
        latents = self.teacher_pipe(
            list(prompts), negative_prompt=_negative(negative), num_inference_steps=s.teacher_steps, guidance_scale=s.guidance_scale, generator=generators(seeds), output_type="latent"
        ).images
        return Reference(latents, self._decode(latents))

    @torch.no_grad()
    def refine(self, prompts: Sequence[str], seeds: Sequence[int], s: GenerationSettings, negative: Sequence[str] | None = None) -> Reference:
        gens = generators(seeds)
        student = self.student(prompts, seeds, s, negative, gens=gens)
        latents = self.img2img_pipe(
            list(prompts),
            negative_prompt=_negative(negative),
            image=student.latents,
            strength=s.sigma,
            num_inference_steps=refine_schedule_length(s.teacher_steps, s.sigma),
            guidance_scale=s.guidance_scale,
            generator=gens,
            output_type="latent",
        ).images
        return Reference(latents, self._decode(latents))


def _negative(negative: Sequence[str] | None) -> list[str] | None:
    return list(negative) if negative is not None else None
