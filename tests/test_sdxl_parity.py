"""The SDXL family: the same pipeline reproduces diffusers' SDXL pipelines on the tiny-xl weights.

tiny-xl is SDXL's architecture at tiny width (export.checkpoints.presets): two text towers, the
``text_time`` UNet, SDXL's VAE config. The references are ``StableDiffusionXLPipeline`` and
``StableDiffusionXLImg2ImgPipeline`` (tests/diffusers_reference_xl.py) with the deployment's
schedulers (the CD student's LCMScheduler; UniPC, the paper's SDXL teacher solver), the same seeds
and weights. Tolerances: torch engines vs diffusers 1e-4 max abs on the images, and on the latents
1e-4 plus 1e-5 of their largest magnitude: the random tiny-xl student predicts x0 far off the data
range (latents up to ~120, measured), where the text towers' different batch grouping (~1e-7 per
value) reaches ~4e-4 absolute, ~3e-6 relative. ONNX Runtime vs torch: 1e-3 on the images.
The perturbation tests show that wrong added conditions move the latents by far more.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from bll_python.engines import Engines
from bll_python.settings import GenerationSettings, Route

LATENT_ATOL = 1e-4
LATENT_RTOL = 1e-5
IMAGE_ATOL = 1e-4
ORT_IMAGE_ATOL = 1e-3
PROMPTS = ["a red fox in the snow", "an old lighthouse at dusk, oil painting", "a bowl of ramen"]
SEEDS = [0, 42, 1234]


def _settings(**kw) -> GenerationSettings:
    base = dict(guidance_scale=6.0, student_steps=3, teacher_steps=5, sigma=0.6, tau=0.0)
    base.update(kw)
    return GenerationSettings(**base)


def _err(a, b) -> float:
    a = a.float() if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a, dtype=np.float32))
    b = b.float() if isinstance(b, torch.Tensor) else torch.from_numpy(np.asarray(b, dtype=np.float32))
    return float((a - b).abs().max())


def _latent_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs error in units of the allowed error (LATENT_ATOL + LATENT_RTOL * max |ref|): < 1 passes."""
    return _err(ours, ref) / (LATENT_ATOL + LATENT_RTOL * float(ref.abs().max()))


def _images(result) -> np.ndarray:
    return result.images_float.permute(0, 2, 3, 1).numpy()


def test_the_checkpoint_chooses_the_sdxl_family(xl_deployment):
    d = xl_deployment
    assert d.family == "sdxl" and d.zero_empty_negative
    assert list(d.specs()) == ["text_encoder", "text_encoder_2", "unet_student", "unet_teacher", "vae_decoder", "image_reward"]
    unet = d.specs()["unet_teacher"]
    assert unet.input_names == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    # The two towers' hidden states side by side, the second tower's projection pooled.
    assert unet.tensor("encoder_hidden_states").dims[-1] == d.text_hidden + d.text_hidden_2
    assert unet.tensor("text_embeds").dims[-1] == d.pooled_dim and unet.tensor("time_ids").dims[-1] == 6
    assert d.teacher_scheduler.cls == "UniPCMultistepScheduler" and d.student_scheduler.cls == "LCMScheduler"


def test_the_second_tokenizer_pads_with_open_clips_token(xl_ort_pipeline):
    tok = xl_ort_pipeline.tokenizers
    a, _ = tok.clip_ids(["a fox"])
    b = tok.clip_ids_2(["a fox"])
    assert a[0, :4].tolist() == b[0, :4].tolist()  # the same BPE
    assert a[0, -1] == 49407 and b[0, -1] == 0  # <|endoftext|> vs "!"


@torch.no_grad()
def test_teacher_only_equals_diffusers_sdxl_pipeline(xl_torch_pipeline, xl_reference):
    s = _settings(strategy="teacher_only")
    ours = xl_torch_pipeline(PROMPTS, SEEDS, s)
    ref = xl_reference.teacher(PROMPTS, SEEDS, s)
    err = _latent_err(ours.latents, ref.latents)
    assert err < 1, f"SDXL teacher_only vs StableDiffusionXLPipeline: latent error {err:.2f} of the tolerance"
    assert _err(_images(ours), ref.images) < IMAGE_ATOL
    assert ours.routes == [Route.TEACHER] * 3 and list(ours.unet_steps) == [s.teacher_steps] * 3


@torch.no_grad()
def test_student_only_equals_diffusers_sdxl_pipeline_with_the_students_sampler(xl_torch_pipeline, xl_reference):
    s = _settings(strategy="student_only")
    ours = xl_torch_pipeline(PROMPTS, SEEDS, s)
    ref = xl_reference.student(PROMPTS, SEEDS, s)
    err = _latent_err(ours.latents, ref.latents)
    assert err < 1, f"SDXL student_only vs StableDiffusionXLPipeline: latent error {err:.2f} of the tolerance"
    assert _err(_images(ours), ref.images) < IMAGE_ATOL


@torch.no_grad()
def test_refine_equals_diffusers_sdxl_img2img_fed_the_student_latent(xl_torch_pipeline, xl_reference):
    s = _settings(strategy="refine", tau=1e6)  # every row below tau: all refined
    ours = xl_torch_pipeline(PROMPTS, SEEDS, s)
    assert ours.routes == [Route.REFINED] * 3
    student, ref = xl_reference.refine(PROMPTS, SEEDS, s)
    assert _latent_err(ours.student_latents, student.latents) < 1
    err = _latent_err(ours.latents, ref.latents)
    assert err < 1, f"SDXL refine vs StableDiffusionXLImg2ImgPipeline: latent error {err:.2f} of the tolerance"
    assert _err(_images(ours), ref.images) < IMAGE_ATOL
    assert list(ours.unet_steps) == [s.student_steps + s.teacher_steps] * 3


@torch.no_grad()
def test_a_negative_prompt_conditions_the_unconditional_branch_as_diffusers_does(xl_torch_pipeline, xl_reference):
    s = _settings(strategy="teacher_only")
    negative = ["blurry", "low quality", "text"]
    ours = xl_torch_pipeline(PROMPTS, SEEDS, s, negative_prompts=negative)
    ref = xl_reference.teacher(PROMPTS, SEEDS, s, negative_prompt=negative)
    assert _latent_err(ours.latents, ref.latents) < 1
    # ... and it matters: the zeroed branch of an empty negative prompt gives another image.
    assert _err(ours.latents, xl_torch_pipeline(PROMPTS, SEEDS, s).latents) > 100 * LATENT_ATOL


class _Perturbed:
    def __init__(self, inner, name: str, change) -> None:
        self.inner, self.spec, self.name, self.change = inner, inner.spec, name, change

    def __call__(self, inputs):
        return self.inner({**inputs, self.name: self.change(inputs[self.name])})


# A size conditioning one 8-pixel step off; the pooled prompt vector dropped.
PERTURBATIONS = {"time_ids": lambda v: v + 8.0, "text_embeds": torch.zeros_like}


@torch.no_grad()
@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_tolerance_catches_wrong_added_conditions(xl_torch_pipeline, xl_reference, name):
    s = _settings(strategy="teacher_only")
    ref = xl_reference.teacher(PROMPTS[:1], SEEDS[:1], s)
    pipe = copy.copy(xl_torch_pipeline)
    e = xl_torch_pipeline.engines
    pipe.engines = Engines(**{**dict(e.items()), "unet_teacher": _Perturbed(e.unet_teacher, name, PERTURBATIONS[name])})
    err = _latent_err(pipe(PROMPTS[:1], SEEDS[:1], s).latents, ref.latents)
    assert err > 100, f"a wrong {name} changed the latents by only {err:.2f} of the tolerance"


@torch.no_grad()
def test_onnxruntime_graphs_equal_torch_through_the_sdxl_pipeline(xl_torch_pipeline, xl_ort_pipeline):
    for strategy in ("teacher_only", "student_only", "refine"):
        s = _settings(strategy=strategy, tau=1e6)
        a = xl_torch_pipeline(PROMPTS, SEEDS, s)
        b = xl_ort_pipeline(PROMPTS, SEEDS, s)
        assert a.routes == b.routes
        # The reward graph rounds to 8-bit levels as upstream's PIL path does, so an image difference
        # far below 1/255 can still flip a level: scores agree to 1e-3, not to float precision.
        assert np.abs(a.scores - b.scores).max() < 1e-3
        err = _err(a.images_float, b.images_float)
        assert err < ORT_IMAGE_ATOL, f"{strategy}: ORT vs torch images differ by {err:.2e}"
