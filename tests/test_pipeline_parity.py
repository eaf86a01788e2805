"""The adaptive pipeline reproduces diffusers' own pipelines on the same weights, seeds and schedulers.

Tolerances (float32 on CPU, torch engines vs diffusers' torch modules):
- latents: 1e-4 max abs. Same ops, different batch grouping of the text encoder; measured ~1e-6.
- The perturbation tests show that a timestep off by one or a missing guidance term moves the
  result by far more than that, so the tolerance can catch both.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    LCMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)

from bll_python.engines import Engines
from bll_python.pipeline import refine_schedule_length
from bll_python.settings import GenerationSettings, Route
from tests.diffusers_reference import tiny_pipeline

LATENT_ATOL = 1e-4
PROMPTS = ["a red fox in the snow", "an old lighthouse at dusk, oil painting", "a bowl of ramen", "two cats on a sofa"]
SEEDS = [0, 1, 42, 1234]


def _generators(seeds):
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def _settings(**kw) -> GenerationSettings:
    base = dict(guidance_scale=7.5, student_steps=4, teacher_steps=8, sigma=0.6, tau=0.0)
    base.update(kw)
    return GenerationSettings(**base)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


@pytest.fixture(scope="module")
def teacher_pipe(tiny_models, deployment):
    sched = DPMSolverMultistepScheduler.from_config(deployment.teacher_scheduler.config)
    return tiny_pipeline(StableDiffusionPipeline, tiny_models, "unet_teacher", sched)


@pytest.fixture(scope="module")
def student_pipe(tiny_models, deployment):
    sched = LCMScheduler.from_config(deployment.student_scheduler.config)
    return tiny_pipeline(StableDiffusionPipeline, tiny_models, "unet_student", sched)


def test_teacher_solver_is_dpm_solver_pp_2m_and_student_sampler_is_lcm(deployment):
    assert deployment.teacher_scheduler.cls == "DPMSolverMultistepScheduler"
    assert deployment.teacher_scheduler.config["algorithm_type"] == "dpmsolver++"
    assert deployment.teacher_scheduler.config["solver_order"] == 2
    assert deployment.student_scheduler.cls == "LCMScheduler"


@torch.no_grad()
def test_teacher_only_equals_diffusers_stable_diffusion_with_dpm_solver(torch_pipeline, teacher_pipe):
    s = _settings(strategy="teacher_only")
    ours = torch_pipeline(PROMPTS, SEEDS, s)
    latents = torch.cat([torch.randn((1, 4, 16, 16), generator=g) for g in _generators(SEEDS)])
    ref = teacher_pipe(PROMPTS, num_inference_steps=s.teacher_steps, guidance_scale=s.guidance_scale, latents=latents.clone(), output_type="latent").images
    err = _max_err(ours.latents, ref)
    assert err < LATENT_ATOL, f"teacher_only vs diffusers: max abs latent error {err:.2e}"
    ref_images = teacher_pipe(PROMPTS, num_inference_steps=s.teacher_steps, guidance_scale=s.guidance_scale, latents=latents.clone(), output_type="np").images
    img_err = float(np.abs(ours.images_float.permute(0, 2, 3, 1).numpy() - ref_images).max())
    assert img_err < 1e-4, f"decoded images differ by {img_err:.2e}"
    assert ours.routes == [Route.TEACHER] * 4 and list(ours.unet_steps) == [s.teacher_steps] * 4


@torch.no_grad()
def test_student_only_equals_diffusers_pipeline_with_lcm_scheduler(torch_pipeline, student_pipe):
    s = _settings(strategy="student_only")
    ours = torch_pipeline(PROMPTS, SEEDS, s)
    # A list of generators makes diffusers draw the initial latents and each LCM step's noise per row.
    ref = student_pipe(PROMPTS, num_inference_steps=s.student_steps, guidance_scale=s.guidance_scale, generator=_generators(SEEDS), output_type="latent").images
    err = _max_err(ours.latents, ref)
    assert err < LATENT_ATOL, f"student_only vs diffusers: max abs latent error {err:.2e}"
    assert ours.routes == [Route.STUDENT] * 4 and list(ours.unet_steps) == [s.student_steps] * 4


@torch.no_grad()
def test_refine_equals_diffusers_img2img_fed_the_student_latent(torch_pipeline, student_pipe, tiny_models, deployment):
    s = _settings(strategy="refine", tau=1e6)  # every row scores below tau: all are refined
    ours = torch_pipeline(PROMPTS, SEEDS, s)
    assert ours.routes == [Route.REFINED] * 4

    # The student run leaves each generator where our pipeline's rollback noise continues from.
    generators = _generators(SEEDS)
    student = student_pipe(PROMPTS, num_inference_steps=s.student_steps, guidance_scale=s.guidance_scale, generator=generators, output_type="latent").images
    assert _max_err(ours.student_latents, student) < LATENT_ATOL
    img2img = tiny_pipeline(
        StableDiffusionImg2ImgPipeline, tiny_models, "unet_teacher", DPMSolverMultistepScheduler.from_config(deployment.teacher_scheduler.config)
    )
    total = refine_schedule_length(s.teacher_steps, s.sigma)
    ref = img2img(PROMPTS, image=student, strength=s.sigma, num_inference_steps=total, guidance_scale=s.guidance_scale, generator=generators, output_type="latent").images
    err = _max_err(ours.latents, ref)
    assert err < LATENT_ATOL, f"refine vs img2img: max abs latent error {err:.2e}"
    assert list(ours.unet_steps) == [s.student_steps + s.teacher_steps] * 4


def test_refine_schedule_runs_exactly_teacher_steps():
    for steps in (1, 5, 10, 20, 45):
        for sigma in (0.05, 0.4, 0.55, 0.7, 0.75, 1.0):
            n = refine_schedule_length(steps, sigma)
            assert int(n * sigma) == steps, (steps, sigma, n)
            assert int((n - 1) * sigma) < steps  # and it is the shortest such schedule


class _OffByOneTimestep:
    def __init__(self, inner):
        self.inner, self.spec = inner, inner.spec

    def __call__(self, inputs):
        return self.inner({**inputs, "timestep": inputs["timestep"] + 1})


@torch.no_grad()
@pytest.mark.parametrize("perturbation", ["timestep_off_by_one", "no_guidance"])
def test_tolerance_catches_a_wrong_timestep_or_a_missing_guidance_term(torch_pipeline, teacher_pipe, perturbation):
    s = _settings(strategy="teacher_only")
    latents = torch.cat([torch.randn((1, 4, 16, 16), generator=g) for g in _generators(SEEDS[:2])])
    ref = teacher_pipe(PROMPTS[:2], num_inference_steps=s.teacher_steps, guidance_scale=s.guidance_scale, latents=latents, output_type="latent").images
    pipe = copy.copy(torch_pipeline)
    if perturbation == "timestep_off_by_one":
        e = torch_pipeline.engines
        pipe.engines = Engines(e.text_encoder, e.unet_student, _OffByOneTimestep(e.unet_teacher), e.vae_decoder, e.image_reward)
        out = pipe(PROMPTS[:2], SEEDS[:2], s)
    else:
        out = pipe(PROMPTS[:2], SEEDS[:2], _settings(strategy="teacher_only", guidance_scale=1.0))
    err = _max_err(out.latents, ref)
    assert err > 100 * LATENT_ATOL, f"{perturbation} changed latents by only {err:.2e}: the tolerance would not catch it"


@torch.no_grad()
def test_onnxruntime_engines_equal_torch_engines_through_the_whole_pipeline(torch_pipeline, ort_pipeline, mixed_batch):
    m = mixed_batch  # rows on both sides of tau: both routes of each strategy
    for strategy in ("refine", "regenerate"):
        s = replace(m.settings, strategy=strategy)
        a = torch_pipeline(m.prompts, m.seeds, s)
        b = ort_pipeline(m.prompts, m.seeds, s)
        assert a.routes == b.routes and {r.value for r in a.routes} == {"student", "refined" if strategy == "refine" else "regenerated"}
        assert np.abs(a.scores - b.scores).max() < 1e-4
        err = _max_err(a.images_float, b.images_float)
        assert err < 1e-3, f"{strategy}: ORT vs torch images differ by {err:.2e}"
        assert np.abs(a.images.astype(int) - b.images.astype(int)).max() <= 1


# The gate on batches with rows on both sides of tau, against diffusers: tests/test_gate.py.


@torch.no_grad()
def test_a_row_depends_only_on_its_prompt_seed_and_settings(ort_pipeline):
    s = _settings(strategy="refine", tau=0.0)
    alone = ort_pipeline([PROMPTS[2]], [SEEDS[2]], s)
    batch = ort_pipeline(PROMPTS, SEEDS, s)
    shuffled = ort_pipeline([PROMPTS[3], PROMPTS[2], PROMPTS[0], PROMPTS[1]], [SEEDS[3], SEEDS[2], SEEDS[0], SEEDS[1]], s)
    assert alone.routes[0] == batch.routes[2] == shuffled.routes[1]
    for other, row in ((batch, 2), (shuffled, 1)):
        assert _max_err(alone.latents[0], other.latents[row]) < 1e-5
        assert np.abs(alone.images[0].astype(int) - other.images[row].astype(int)).max() <= 1
