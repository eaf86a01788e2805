"""SDXL-Refiner as the optional sixth component: small rollbacks go to the refiner, large ones to the
base teacher (supplement D.3, Table 5), each reproducing diffusers' ``StableDiffusionXLImg2ImgPipeline``.

The tiny-xl refiner (export.checkpoints.presets.write_xl_refiner) has the refiner's layout: a UNet
conditioned on the second text tower alone with aesthetic-score time ids, the base's second tower
and VAE. Torch engines; the reference is diffusers' img2img pipeline in the refiner's configuration
(``requires_aesthetics_score``, no first tower) fed the student's latent with ``strength`` = sigma
and the generators the student run left, as for the base (tests/test_sdxl_parity.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bll_python.engines import CountingEngine, Engines, TorchEngine
from bll_python.pipeline import AdaptivePipeline
from bll_python.settings import GenerationSettings, Route
from bll_python.text import PromptTokenizers
from export.build import make_deployment
from export.checkpoints.errors import SourceError
from export.checkpoints.presets import write_xl_refiner
from export.checkpoints.sources import Sources, load_sources
from export.checkpoints.tokenizers import write_bert_vocab
from tests.diffusers_reference_xl import DiffusersXLReference

PROMPTS = ["a red fox in the snow", "an old lighthouse at dusk, oil painting"]
SEEDS = [3, 4]


@pytest.fixture(scope="module")
def refiner_setup(tiny_xl_refiner_sources, tmp_path_factory):
    root = tmp_path_factory.mktemp("refiner")
    models = load_sources(tiny_xl_refiner_sources)
    deployment = make_deployment(models, preset="tiny-xl", max_rows=4)
    engines = Engines(**{name: TorchEngine(models.modules[name], spec) for name, spec in deployment.specs().items()})
    tokenizers = PromptTokenizers(models.tokenizer_dir, write_bert_vocab(root / "reward"), deployment.reward_text_len, clip_2_dir=models.tokenizer_2_dir)
    return models, deployment, AdaptivePipeline(engines, deployment, tokenizers)


def test_the_refiner_is_a_sixth_component_conditioned_on_the_second_tower(refiner_setup):
    _, d, _ = refiner_setup
    assert list(d.specs()) == ["text_encoder", "text_encoder_2", "unet_student", "unet_teacher", "unet_refiner", "vae_decoder", "image_reward"]
    unet = d.specs()["unet_refiner"]
    assert unet.tensor("encoder_hidden_states").dims[-1] == d.text_hidden_2 and unet.tensor("time_ids").dims[-1] == 5
    assert (d.uses_refiner(0.4), d.uses_refiner(0.5), d.uses_refiner(0.85)) == (True, True, False)


@torch.no_grad()
@pytest.mark.parametrize("sigma, which", [(0.4, "refiner"), (0.85, "base")])
def test_refine_picks_refiner_or_base_by_sigma_and_equals_diffusers_img2img(refiner_setup, sigma, which):
    models, d, pipe = refiner_setup
    s = GenerationSettings(guidance_scale=5.0, student_steps=2, teacher_steps=4, sigma=sigma, strategy="refine", tau=1e6)
    counting = Engines(**{name: CountingEngine(engine) for name, engine in pipe.engines.items()})
    ours = AdaptivePipeline(counting, d, pipe.tokenizers)(PROMPTS, SEEDS, s)
    assert ours.routes == [Route.REFINED] * 2 and list(ours.unet_steps) == [6, 6]
    assert len(counting["unet_refiner"].calls) == (4 if which == "refiner" else 0)
    assert len(counting["unet_teacher"].calls) == (0 if which == "refiner" else 4)

    # diffusers' img2img pipeline in the refiner's configuration (requires_aesthetics_score, no first
    # tower) or the base's, fed the student's latent (tests/diffusers_reference_xl.py).
    ref = DiffusersXLReference(models, d).refine(PROMPTS, SEEDS, s)[1].latents
    err = float((ours.latents - ref).abs().max())
    allowed = 1e-4 + 1e-5 * float(ref.abs().max())
    print(f"[refine sigma={sigma} by {which}] vs StableDiffusionXLImg2ImgPipeline: max abs latent error {err:.2e} (allowed {allowed:.1e})")
    assert err < allowed


def test_a_refiner_with_another_second_tower_is_refused(tiny_xl_sources, tmp_path):
    from transformers import CLIPTextModelWithProjection

    refiner = write_xl_refiner(tmp_path / "refiner", Path(tiny_xl_sources.teacher))
    tower = CLIPTextModelWithProjection.from_pretrained(refiner / "text_encoder_2")
    with torch.no_grad():
        next(tower.parameters()).add_(1.0)
    tower.save_pretrained(refiner / "text_encoder_2", safe_serialization=True)
    with pytest.raises(SourceError, match="second text encoder"):
        load_sources(Sources(**{**vars(tiny_xl_sources), "refiner": refiner}))
