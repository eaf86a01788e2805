"""SDXL students: every kind loads from its real format over an SDXL teacher and samples as its
authors publish it.

For each kind a tiny-xl checkpoint is written in the published model's format (a full UNet folder,
SDXL-Turbo's ``unet/`` + ``scheduler/``, or a LoRA file), loaded through the export's loaders (LoRAs
fused into the SDXL base UNet) and run ``student_only`` with torch engines at the kind's recorded
defaults. The reference is the published diffusers usage on ``StableDiffusionXLPipeline``, written
out independently below (the LoRA loaded and fused by diffusers itself). No ONNX export here (the
ONNX path of SDXL graphs is covered by tests/test_sdxl_parity.py), so the whole module stays cheap.
Tolerance as tests/test_sdxl_parity.py: 1e-4 plus 1e-5 of the latents' largest magnitude.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, LCMScheduler, StableDiffusionXLPipeline, TCDScheduler, UNet2DConditionModel

from bll_python.engines import Engines, TorchEngine
from bll_python.pipeline import AdaptivePipeline
from bll_python.settings import GenerationSettings
from bll_python.text import PromptTokenizers
from export.build import make_deployment
from export.checkpoints.presets import write_student
from export.checkpoints.sources import Sources, load_sources
from export.checkpoints.tokenizers import write_bert_vocab

PROMPTS = ["a red fox in the snow", "an old lighthouse at dusk, oil painting"]
SEEDS = [0, 42]
KINDS = ("add", "lcm", "lcm-lora", "hyper-sd", "flash", "lightning")


def _full_unet(teacher: Path, student: Path, scheduler: Any) -> StableDiffusionXLPipeline:
    base = StableDiffusionXLPipeline.from_pretrained(teacher)
    return StableDiffusionXLPipeline(**{**base.components, "unet": UNet2DConditionModel.from_pretrained(student / "unet"), "scheduler": scheduler})


def _lora(teacher: Path, student: Path, scheduler: Callable[[Any], Any]) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(teacher)
    pipe.scheduler = scheduler(pipe.scheduler.config)
    pipe.load_lora_weights(str(student))
    pipe.fuse_lora()
    return pipe


def published_usage(kind: str, teacher: Path, student: Path) -> tuple[StableDiffusionXLPipeline, dict[str, Any]]:
    """(diffusers pipeline, call kwargs) as the SDXL model's card samples it."""
    trailing = dict(timestep_spacing="trailing")
    if kind == "add":  # stabilityai/sdxl-turbo: its scheduler/ (Euler ancestral, trailing), guidance 0; Table 5: 2 steps
        return _full_unet(teacher, student, EulerAncestralDiscreteScheduler.from_pretrained(student, subfolder="scheduler")), dict(num_inference_steps=2, guidance_scale=0.0)
    if kind == "lcm":  # latent-consistency/lcm-sdxl: LCMScheduler, 4 steps, w = 8 through the guidance embedding
        return _full_unet(teacher, student, LCMScheduler.from_pretrained(student, subfolder="scheduler")), dict(num_inference_steps=4, guidance_scale=8.0)
    if kind == "lcm-lora":  # latent-consistency/lcm-lora-sdxl
        return _lora(teacher, student, LCMScheduler.from_config), dict(num_inference_steps=4, guidance_scale=0.0)
    if kind == "hyper-sd":  # ByteDance/Hyper-SD, the unified SDXL LoRA with TCD (eta: the kind's default 0.3)
        return _lora(teacher, student, TCDScheduler.from_config), dict(num_inference_steps=4, guidance_scale=0.0, eta=0.3)
    if kind == "flash":  # jasperai/flash-sdxl
        return _lora(teacher, student, lambda c: LCMScheduler.from_config(c, **trailing)), dict(num_inference_steps=4, guidance_scale=0.0)
    if kind == "lightning":  # ByteDance/SDXL-Lightning, the 4-step LoRA
        return _lora(teacher, student, lambda c: EulerDiscreteScheduler.from_config(c, **trailing)), dict(num_inference_steps=4, guidance_scale=0.0)
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def loaded(tiny_xl_sources, tmp_path_factory) -> Callable[[str], tuple[Sources, AdaptivePipeline]]:
    root = tmp_path_factory.mktemp("xl-students")
    vocab = write_bert_vocab(root / "reward_tokenizer")
    cache: dict[str, tuple[Sources, AdaptivePipeline]] = {}

    def get(kind: str) -> tuple[Sources, AdaptivePipeline]:
        if kind not in cache:
            student = write_student(kind, root / f"student-{kind}", "tiny-xl")
            sources = Sources(teacher=tiny_xl_sources.teacher, student=student, student_kind=kind, reward=tiny_xl_sources.reward, reward_config=tiny_xl_sources.reward_config)
            models = load_sources(sources)
            deployment = make_deployment(models, preset="tiny-xl", max_rows=4)
            engines = Engines(**{name: TorchEngine(models.modules[name], spec) for name, spec in deployment.specs().items()})
            tokenizers = PromptTokenizers(models.tokenizer_dir, vocab, deployment.reward_text_len, clip_2_dir=models.tokenizer_2_dir)
            cache[kind] = (sources, AdaptivePipeline(engines, deployment, tokenizers))
        return cache[kind]

    return get


@torch.no_grad()
@pytest.mark.parametrize("kind", KINDS)
def test_sdxl_student_only_equals_the_published_diffusers_usage(loaded, kind):
    sources, ours = loaded(kind)
    pipe, call = published_usage(kind, Path(sources.teacher), Path(sources.student))
    pipe.set_progress_bar_config(disable=True)
    d = ours.deployment
    assert d.family == "sdxl" and d.defaults.student_steps == call["num_inference_steps"]
    settings = GenerationSettings(**{**d.defaults.as_dict(), "strategy": "student_only", "tau": None, "k": None})
    got = ours(PROMPTS, SEEDS, settings)
    gens = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    ref = pipe(PROMPTS, generator=gens, output_type="latent", height=d.image_size, width=d.image_size, **call).images
    err = float((got.latents - ref).abs().max())
    allowed = 1e-4 + 1e-5 * float(ref.abs().max())
    print(f"[sdxl {kind}] {d.student_scheduler.cls} {d.student_scheduler.config.get('timestep_spacing')}: max abs latent error {err:.2e} (allowed {allowed:.1e})")
    assert err < allowed, f"sdxl {kind}: max abs latent error {err:.2e} vs the published diffusers usage"


def test_sdxl_kinds_record_their_published_samplers_and_the_papers_defaults(loaded):
    expected = {
        "add": ("EulerAncestralDiscreteScheduler", "trailing", False),
        "lightning": ("EulerDiscreteScheduler", "trailing", False),
        "flash": ("LCMScheduler", "trailing", False),
    }
    for kind, (cls, spacing, cfg) in expected.items():
        d = loaded(kind)[1].deployment
        assert (d.student_scheduler.cls, d.student_scheduler.config["timestep_spacing"], d.student_uses_cfg) == (cls, spacing, cfg), kind
        assert d.teacher_scheduler.cls == "UniPCMultistepScheduler"
    add = loaded("add")[1].deployment.defaults
    assert (add.student_steps, add.teacher_steps, add.sigma, add.k) == (2, 4, 0.4, 50.0)  # Table 5, ADD-XL
