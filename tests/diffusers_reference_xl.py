"""What diffusers' own SDXL pipelines produce on the tiny-xl weights: the reference for the SDXL family.

``StableDiffusionXLPipeline`` (student, teacher) and ``StableDiffusionXLImg2ImgPipeline`` (refine,
fed the student's latent with ``strength`` = sigma), built from the exported checkpoint parts and the
deployment's scheduler recipes, called with one ``torch.Generator("cpu").manual_seed(seed)`` per row
and no negative prompt (SDXL base's ``force_zeros_for_empty_prompt`` then conditions the
unconditional branch on zeros).
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from transformers import CLIPTokenizer

from bll_python.pipeline import refine_schedule_length
from bll_python.settings import GenerationSettings
from tests.diffusers_reference import Reference, generators


class DiffusersXLReference:
    def __init__(self, models, deployment) -> None:
        raw = models.raw
        self.common = dict(
            vae=raw["vae"],
            text_encoder=raw["text_encoder"],
            text_encoder_2=raw["text_encoder_2"],
            tokenizer=CLIPTokenizer.from_pretrained(models.tokenizer_dir),
            tokenizer_2=CLIPTokenizer.from_pretrained(models.tokenizer_2_dir),
        )
        self.raw = raw
        self.deployment = deployment
        self.student_pipe = StableDiffusionXLPipeline(unet=raw["unet_student"], scheduler=deployment.student_scheduler.build(), force_zeros_for_empty_prompt=True, **self.common)
        self.teacher_pipe = StableDiffusionXLPipeline(unet=raw["unet_teacher"], scheduler=deployment.teacher_scheduler.build(), force_zeros_for_empty_prompt=True, **self.common)
        # SDXL base as img2img: no aesthetic-score conditioning, the base's time ids.
        self.img2img_pipe = StableDiffusionXLImg2ImgPipeline(
            unet=raw["unet_teacher"], scheduler=deployment.teacher_scheduler.build(), force_zeros_for_empty_prompt=True, requires_aesthetics_score=False, **self.common
        )
        # SDXL-Refiner, where the export has one: the second tower alone, aesthetic-score time ids.
        self.refiner_pipe = None
        if "unet_refiner" in raw:
            self.refiner_pipe = StableDiffusionXLImg2ImgPipeline(
                vae=raw["vae"],
                text_encoder=None,
                text_encoder_2=raw["text_encoder_2"],
                tokenizer=None,
                tokenizer_2=self.common["tokenizer_2"],
                unet=raw["unet_refiner"],
                scheduler=deployment.refiner_scheduler.build(),
                requires_aesthetics_score=True,
                force_zeros_for_empty_prompt=False,
            )
        for pipe in (self.student_pipe, self.teacher_pipe, self.img2img_pipe, self.refiner_pipe):
            if pipe is not None:
                pipe.set_progress_bar_config(disable=True)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1], as the pipelines' ``output_type="np"`` path computes it."""
        image = self.raw["vae"].decode(latents / self.raw["vae"].config.scaling_factor, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)

    def _size(self, s: GenerationSettings) -> dict[str, int]:
        height, width = self.deployment.resolve_size(s)
        return dict(height=height, width=width)

    @torch.no_grad()
    def student(self, prompts: Sequence[str], seeds: Sequence[int], s: GenerationSettings, gens=None, **kw) -> Reference:
        gens = gens if gens is not None else generators(seeds)
        step_kwargs = dict(self.deployment.student_scheduler.step_kwargs)
        latents = self.student_pipe(
            list(prompts), num_inference_steps=s.student_steps, guidance_scale=s.guidance_scale, generator=gens, output_type="latent", **self._size(s), **step_kwargs, **kw
        ).images
        return Reference(latents, self.decode(latents).permute(0, 2, 3, 1).numpy())

    @torch.no_grad()
    def teacher(self, prompts: Sequence[str], seeds: Sequence[int], s: GenerationSettings, **kw) -> Reference:
        latents = self.teacher_pipe(
            list(prompts), num_inference_steps=s.teacher_steps, guidance_scale=s.guidance_scale, generator=generators(seeds), output_type="latent", **self._size(s), **kw
        ).images
        return Reference(latents, self.decode(latents).permute(0, 2, 3, 1).numpy())

    @torch.no_grad()
    def refine(self, prompts: Sequence[str], seeds: Sequence[int], s: GenerationSettings, img2img=None) -> tuple[Reference, Reference]:
        """(the student's sample, its refinement): the student run leaves each generator where the
        refinement noise continues from. Refined by SDXL-Refiner where the deployment sends ``s.sigma``
        to it, otherwise by the base (``img2img``: another pipeline, for tests that tell them apart)."""
        gens = generators(seeds)
        student = self.student(prompts, seeds, s, gens=gens)
        if img2img is None:
            img2img = self.refiner_pipe if self.deployment.uses_refiner(s.sigma) else self.img2img_pipe
        latents = img2img(
            list(prompts),
            image=student.latents,
            strength=s.sigma,
            num_inference_steps=refine_schedule_length(s.teacher_steps, s.sigma),
            guidance_scale=s.guidance_scale,
            generator=gens,
            output_type="latent",
        ).images
        return student, Reference(latents, self.decode(latents).permute(0, 2, 3, 1).numpy())
