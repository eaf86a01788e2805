"""Negative prompts are the unconditional branch of classifier-free guidance, as diffusers'
``negative_prompt=`` makes them: teacher_only, student_only and refine, in-process and served.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from bll_python.settings import GenerationSettings
from clients.client import AdaptiveClient

PROMPTS = ["a red fox in the snow", "a bowl of ramen"]
SEEDS = [7, 11]
NEGATIVE = ["blurry, low quality", "a dog"]
SETTINGS = GenerationSettings(guidance_scale=7.5, student_steps=2, teacher_steps=3, sigma=0.6, tau=1e6)  # refine: every row
STRATEGIES = ["teacher_only", "student_only", "refine"]
LATENT_ATOL = 1e-4


def _reference(reference, strategy: str, negative):
    s = replace(SETTINGS, strategy=strategy)
    run = {"teacher_only": reference.teacher, "student_only": reference.student, "refine": reference.refine}[strategy]
    return run(PROMPTS, SEEDS, s, negative)


@pytest.fixture(scope="module")
def references(diffusers_reference):
    """diffusers with the negative prompts, per strategy; and checked to differ from without them."""
    with_negative = {s: _reference(diffusers_reference, s, NEGATIVE) for s in STRATEGIES}
    for s in STRATEGIES:
        without = _reference(diffusers_reference, s, None)
        moved = float((with_negative[s].latents - without.latents).abs().max())
        assert moved > 100 * LATENT_ATOL, f"{s}: the negative prompt moves diffusers' latents by only {moved:.2e}"
    return with_negative


@torch.no_grad()
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_negative_prompts_equal_diffusers_negative_prompt_in_process(torch_pipeline, references, strategy):
    out = torch_pipeline(PROMPTS, SEEDS, replace(SETTINGS, strategy=strategy), negative_prompts=NEGATIVE)
    err = float((out.latents - references[strategy].latents).abs().max())
    assert err < LATENT_ATOL, f"{strategy} with negative prompts vs diffusers: max abs latent error {err:.2e}"


@pytest.mark.server
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_served_negative_prompts_equal_diffusers_negative_prompt(tiny_server, references, strategy):
    settings = {k: v for k, v in replace(SETTINGS, strategy=strategy).as_dict().items() if v is not None}
    with AdaptiveClient(tiny_server.grpc_url, "grpc") as client:
        got = client.generate(PROMPTS, SEEDS, negative_prompts=NEGATIVE, **settings)
        plain = client.generate(PROMPTS, SEEDS, **settings)
    expected = references[strategy].uint8
    for i, g in enumerate(got):
        diff = int(np.abs(g.image.astype(int) - expected[i].astype(int)).max())
        assert diff <= 1, f"{strategy} row {i}: served image differs from diffusers' by {diff} LSB"
        assert not np.array_equal(g.image, plain[i].image), f"{strategy} row {i}: the server ignored the negative prompt"
