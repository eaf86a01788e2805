"""The gate in-process: a batch with rows on both sides of tau, against diffusers.

Specification (Algorithm 1): a row whose student sample scores at least tau is the student's
sample, bit for bit what ``student_only`` gives; a row scoring below tau is what diffusers'
img2img (refine) or txt2img (regenerate) gives for that row; only those rows reach the teacher.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from bll_python.engines import CountingEngine, Engines
from bll_python.pipeline import AdaptivePipeline
from bll_python.settings import Route, Strategy

LATENT_ATOL = 1e-4  # torch engines vs diffusers' modules: measured 0.0 (see test_pipeline_parity)


def _with_counting_teacher(torch_engines, deployment, tokenizers) -> tuple[AdaptivePipeline, CountingEngine]:
    teacher = CountingEngine(torch_engines.unet_teacher)
    e = torch_engines
    return AdaptivePipeline(Engines(e.text_encoder, e.unet_student, teacher, e.vae_decoder, e.image_reward), deployment, tokenizers), teacher


def _max_err(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


@torch.no_grad()
def _check_mixed(strategy: Strategy, route: Route, mixed, torch_engines, deployment, torch_pipeline, reference):
    s = replace(mixed.settings, strategy=strategy)
    pipe, teacher = _with_counting_teacher(torch_engines, deployment, torch_pipeline.tokenizers)
    out = pipe(mixed.prompts, mixed.seeds, s)
    student = torch_pipeline(mixed.prompts, mixed.seeds, replace(s, strategy=Strategy.STUDENT_ONLY, tau=None))

    assert out.teacher_rows == mixed.rejected
    assert out.routes == [route if i in mixed.rejected else Route.STUDENT for i in range(len(mixed.prompts))]
    np.testing.assert_array_equal(out.scores, student.scores)  # the gate's input is the student's score
    # Every teacher step runs the rejected rows only, doubled for classifier-free guidance.
    assert teacher.calls == [2 * len(mixed.rejected)] * s.teacher_steps
    teacher_steps = s.teacher_steps
    assert out.unet_steps.tolist() == [s.student_steps + (teacher_steps if i in mixed.rejected else 0) for i in range(len(mixed.prompts))]

    for i in mixed.accepted:
        assert torch.equal(out.latents[i], student.latents[i]), f"accepted row {i} is not the student's sample"
        np.testing.assert_array_equal(out.images[i], student.images[i])

    rows = mixed.rejected
    prompts, seeds = [mixed.prompts[i] for i in rows], [mixed.seeds[i] for i in rows]
    ref = reference.refine(prompts, seeds, s) if strategy is Strategy.REFINE else reference.teacher(prompts, seeds, s)
    err = _max_err(out.latents[rows], ref.latents)
    assert err < LATENT_ATOL, f"rejected rows vs diffusers: max abs latent error {err:.2e}"
    img_err = _max_err(out.images_float[rows].permute(0, 2, 3, 1), ref.images)
    assert img_err < LATENT_ATOL, f"rejected rows vs diffusers: max abs image error {img_err:.2e}"
    # The teacher's work shows: a rejected row is no longer the student's sample.
    assert all(_max_err(out.latents[i], student.latents[i]) > 100 * LATENT_ATOL for i in rows)


def test_a_mixed_refine_batch_keeps_accepted_rows_bit_for_bit_and_refines_the_rest_as_diffusers_img2img(mixed_batch, torch_engines, deployment, torch_pipeline, diffusers_reference):
    _check_mixed(Strategy.REFINE, Route.REFINED, mixed_batch, torch_engines, deployment, torch_pipeline, diffusers_reference)


def test_a_mixed_regenerate_batch_keeps_accepted_rows_and_regenerates_the_rest_as_diffusers_txt2img(mixed_batch, torch_engines, deployment, torch_pipeline, diffusers_reference):
    _check_mixed(Strategy.REGENERATE, Route.REGENERATED, mixed_batch, torch_engines, deployment, torch_pipeline, diffusers_reference)
