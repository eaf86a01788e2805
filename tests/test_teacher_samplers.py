"""Every teacher sampler a deployment can choose reproduces diffusers' own pipelines with that scheduler.

For each ``--teacher-sampler`` the reference is written the way a diffusers user writes it:
``<SchedulerClass>.from_config(pipe.scheduler.config, **settings)`` on the teacher's own scheduler
config, ``StableDiffusionPipeline`` for ``teacher_only`` and ``regenerate`` (fed the rows' initial
noise), ``StableDiffusionImg2ImgPipeline`` on the student latent for ``refine``. Tolerance as in
test_pipeline_parity: 1e-4 max abs on the latents (same float32 ops on the same torch modules).
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    LCMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)

from bll_python.deployment import Deployment
from bll_python.engines import Engines
from bll_python.inprocess import load_tokenizers
from bll_python.pipeline import AdaptivePipeline, refine_schedule_length
from bll_python.settings import GenerationSettings, Route
from export.checkpoints.errors import SourceError
from export.checkpoints.samplers import TEACHER_SAMPLERS, teacher_recipe
from tests.diffusers_reference import tiny_pipeline

LATENT_ATOL = 1e-4
PROMPTS = ["a red fox in the snow", "an old lighthouse at dusk, oil painting", "a bowl of ramen"]
SEEDS = [0, 42, 1234]
SAMPLERS = list(TEACHER_SAMPLERS)

# How a diffusers user builds each solver from the pipeline's scheduler config (the model cards' idiom).
DIFFUSERS_SCHEDULERS = {
    "dpm++2m": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2),
    "ddim": DDIMScheduler.from_config,
    "unipc": UniPCMultistepScheduler.from_config,
}


def _settings(**kw) -> GenerationSettings:
    return GenerationSettings(**{**dict(guidance_scale=7.5, student_steps=4, teacher_steps=8, sigma=0.6, tau=1e6), **kw})


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _generators(seeds):
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


class _Counting:
    """An engine that counts its calls."""

    def __init__(self, inner) -> None:
        self.inner, self.spec, self.calls = inner, inner.spec, 0

    def __call__(self, inputs):
        self.calls += 1
        return self.inner(inputs)


@pytest.fixture(scope="module")
def teacher_config(tiny_sources) -> dict:
    # What a user's pipe.scheduler.config is: the teacher folder's own scheduler (SD1.5 ships PNDM).
    return dict(StableDiffusionPipeline.from_pretrained(tiny_sources.teacher, safety_checker=None, requires_safety_checker=False).scheduler.config)


@pytest.fixture(scope="module")
def pipelines(tiny_models, deployment, tiny_repository, torch_engines):
    """sampler -> (our in-process pipeline with that teacher solver, its counting teacher engine)."""
    tokenizers = load_tokenizers(tiny_repository, deployment)
    out = {}
    for name in SAMPLERS:
        dep = replace(deployment, teacher_scheduler=teacher_recipe(tiny_models.raw["schedule"], name))
        teacher = _Counting(torch_engines.unet_teacher)
        engines = Engines(torch_engines.text_encoder, torch_engines.unet_student, teacher, torch_engines.vae_decoder, torch_engines.image_reward)
        out[name] = (AdaptivePipeline(engines, dep, tokenizers), teacher)
    return out


@pytest.fixture(scope="module")
def student_pipe(tiny_models, deployment):
    return tiny_pipeline(StableDiffusionPipeline, tiny_models, "unet_student", LCMScheduler.from_config(deployment.student_scheduler.config))


# ---------------------------------------------------------------------------------------------
# The recipe


@pytest.mark.parametrize("name", SAMPLERS)
def test_the_recipe_is_the_diffusers_scheduler_a_user_builds_from_the_teachers_config(name, tiny_models, teacher_config):
    recipe = teacher_recipe(tiny_models.raw["schedule"], name)
    theirs = DIFFUSERS_SCHEDULERS[name](teacher_config)
    assert recipe.cls == type(theirs).__name__
    ours = recipe.build()
    for n in (8, 14):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert torch.equal(ours.timesteps, theirs.timesteps), name
    # Every setting the manifest records is the one diffusers' own construction has.
    assert recipe.config == {k: theirs.config[k] for k in recipe.config}


def test_the_manifest_records_the_teacher_recipe(deployment, tiny_models):
    dep = replace(deployment, teacher_scheduler=teacher_recipe(tiny_models.raw["schedule"], "unipc"))
    back = Deployment.from_json(dep.to_json())
    assert back.teacher_scheduler == dep.teacher_scheduler and back.teacher_scheduler.cls == "UniPCMultistepScheduler"


def test_an_unknown_sampler_is_refused_naming_the_choices(tiny_models):
    with pytest.raises(SourceError, match=r"--teacher-sampler 'euler' is not supported; choose one of \['dpm\+\+2m', 'ddim', 'unipc'\]"):
        teacher_recipe(tiny_models.raw["schedule"], "euler")


@pytest.mark.parametrize("name", SAMPLERS)
def test_refine_schedule_arithmetic_holds_for_the_solvers_order(name, tiny_models):
    # diffusers' own img2img arithmetic (get_timesteps) over a schedule of refine_schedule_length
    # steps leaves exactly teacher_steps timesteps, for this scheduler's ``order``.
    sched = teacher_recipe(tiny_models.raw["schedule"], name).build()
    assert sched.order == 1
    for steps in (1, 4, 8, 12, 20):
        for sigma in (0.1, 0.3, 0.55, 0.75, 1.0):
            total = refine_schedule_length(steps, sigma)
            sched.set_timesteps(total)
            timesteps, remaining = StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=sched), total, sigma, "cpu")
            assert len(timesteps) == remaining == steps, (name, steps, sigma, total)


# ---------------------------------------------------------------------------------------------
# Parity with diffusers, per sampler and strategy


@torch.no_grad()
@pytest.mark.parametrize("name", SAMPLERS)
def test_teacher_only_equals_stable_diffusion_pipeline(name, pipelines, tiny_models, teacher_config):
    pipe, teacher = pipelines[name]
    s = _settings(strategy="teacher_only")
    teacher.calls = 0
    ours = pipe(PROMPTS, SEEDS, s)
    ref_pipe = tiny_pipeline(StableDiffusionPipeline, tiny_models, "unet_teacher", DIFFUSERS_SCHEDULERS[name](teacher_config))
    ref = ref_pipe(PROMPTS, num_inference_steps=s.teacher_steps, guidance_scale=s.guidance_scale, generator=_generators(SEEDS), output_type="latent").images
    err = _max_err(ours.latents, ref)
    print(f"\n    {name} teacher_only: max abs latent error {err:.2e}")
    assert err < LATENT_ATOL, f"{name} teacher_only vs diffusers: {err:.2e}"
    assert teacher.calls == s.teacher_steps and list(ours.unet_steps) == [s.teacher_steps] * len(PROMPTS)


@torch.no_grad()
@pytest.mark.parametrize("name", SAMPLERS)
def test_regenerate_equals_stable_diffusion_pipeline_from_the_rows_initial_noise(name, pipelines, tiny_models, teacher_config):
    pipe, _ = pipelines[name]
    s = _settings(strategy="regenerate")  # tau 1e6: every row regenerated
    ours = pipe(PROMPTS, SEEDS, s)
    assert ours.routes == [Route.REGENERATED] * len(PROMPTS)
    noise = torch.cat([torch.randn((1, 4, 16, 16), generator=g) for g in _generators(SEEDS)])
    ref_pipe = tiny_pipeline(StableDiffusionPipeline, tiny_models, "unet_teacher", DIFFUSERS_SCHEDULERS[name](teacher_config))
    ref = ref_pipe(PROMPTS, num_inference_steps=s.teacher_steps, guidance_scale=s.guidance_scale, latents=noise, output_type="latent").images
    err = _max_err(ours.latents, ref)
    print(f"\n    {name} regenerate: max abs latent error {err:.2e}")
    assert err < LATENT_ATOL, f"{name} regenerate vs diffusers: {err:.2e}"


@torch.no_grad()
@pytest.mark.parametrize("name", SAMPLERS)
def test_refine_equals_img2img_on_the_student_latent(name, pipelines, tiny_models, teacher_config, student_pipe):
    pipe, teacher = pipelines[name]
    s = _settings(strategy="refine")  # tau 1e6: every row refined
    teacher.calls = 0
    ours = pipe(PROMPTS, SEEDS, s)
    assert ours.routes == [Route.REFINED] * len(PROMPTS)
    generators = _generators(SEEDS)  # the student run leaves them where the rollback noise continues
    student = student_pipe(PROMPTS, num_inference_steps=s.student_steps, guidance_scale=s.guidance_scale, generator=generators, output_type="latent").images
    img2img = tiny_pipeline(StableDiffusionImg2ImgPipeline, tiny_models, "unet_teacher", DIFFUSERS_SCHEDULERS[name](teacher_config))
    total = refine_schedule_length(s.teacher_steps, s.sigma)
    ref = img2img(PROMPTS, image=student, strength=s.sigma, num_inference_steps=total, guidance_scale=s.guidance_scale, generator=generators, output_type="latent").images
    err = _max_err(ours.latents, ref)
    print(f"\n    {name} refine: max abs latent error {err:.2e}")
    assert err < LATENT_ATOL, f"{name} refine vs img2img: {err:.2e}"
    assert teacher.calls == s.teacher_steps and list(ours.unet_steps) == [s.student_steps + s.teacher_steps] * len(PROMPTS)


@torch.no_grad()
def test_the_samplers_really_differ(pipelines):
    # Otherwise the parity above could pass with the wrong solver.
    s = _settings(strategy="teacher_only")
    latents = {name: pipe(PROMPTS[:1], SEEDS[:1], s).latents for name, (pipe, _) in pipelines.items()}
    for a in SAMPLERS:
        for b in SAMPLERS:
            if a < b:
                assert _max_err(latents[a], latents[b]) > 100 * LATENT_ATOL, (a, b)


# ---------------------------------------------------------------------------------------------
# The command line


def test_export_records_the_chosen_teacher_sampler(tmp_path, capsys):
    from bll_python.layout import assets_dir
    from export.cli import main

    out = tmp_path / "repository"
    assert main(["--preset", "tiny", "--teacher-sampler", "ddim", "--out", str(out), "--calibration-count", "0", "--quiet"]) == 0
    assert "teacher       ddim: DDIMScheduler(" in capsys.readouterr().out
    recorded = Deployment.load(assets_dir(out)).teacher_scheduler
    assert recorded.cls == "DDIMScheduler" and recorded.config["steps_offset"] == 1 and recorded.config["set_alpha_to_one"] is False


def test_an_unknown_teacher_sampler_exits_2_with_one_line_before_loading_anything(tmp_path, capsys):
    from export.cli import main

    assert main(["--teacher", str(tmp_path), "--student", str(tmp_path), "--student-kind", "cd", "--reward", str(tmp_path), "--teacher-sampler", "heun"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["python -m export: error: --teacher-sampler 'heun' is not supported; choose one of ['dpm++2m', 'ddim', 'unipc']"]
