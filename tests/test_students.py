"""Every student kind exports from its real checkpoint format and samples as its authors publish.

For each kind a tiny random checkpoint is written in the format the published model uses (a full
UNet folder, or a ``pytorch_lora_weights.safetensors`` LoRA in the diffusers or kohya key layout),
exported with ``export_repository``, and served ``student_only``. The reference is the model's
published diffusers usage, written out independently below (``published_usage``): the same
pipeline class, the LoRA loaded and fused by diffusers itself, the same scheduler and call
arguments, per-row generators. Tolerances as in test_pipeline_parity: torch engines vs diffusers
1e-4 max abs on the latents (same float32 ops; measured: bitwise equal); ONNX Runtime vs torch 1e-3
on the decoded images and 1e-4 relative on the latents (see ORT_LATENT_RTOL).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import torch
from diffusers import (
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionPipeline,
    TCDScheduler,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file

from bll_python.deployment import MANIFEST, Deployment
from bll_python.engines import Engines, TorchEngine
from bll_python.inprocess import inprocess_pipeline, load_tokenizers
from bll_python.layout import assets_dir
from bll_python.pipeline import AdaptivePipeline
from bll_python.settings import GenerationSettings, Strategy
from export.build import ExportSummary, export_repository
from export.cli import main
from export.models.image_reward_config import CONFIG_NAME
from export.checkpoints.presets import LORA_FILE, LORA_KEY_LAYOUTS, ldm_module_name, lora_tensors, write_cd_student, write_lcm_student, write_lora_student, write_student, write_teacher, write_tiny_image_reward
from export.checkpoints.lora import check_lora
from export.checkpoints.sources import STUDENT_MUST_MATCH, LoadedModels, Sources, _check_student_fits, load_sources
from export.checkpoints.errors import SourceError
from export.checkpoints.students import STUDENT_KINDS, student_kind

KINDS = ("cd", "lcm", "lcm-lora", "hyper-sd", "flash")
LORA_KINDS = ("lcm-lora", "hyper-sd", "flash")
PROMPTS = ["a red fox in the snow", "an old lighthouse at dusk, oil painting"]
SEEDS = [0, 42]
LATENT_ATOL = 1e-4
ORT_ATOL = 1e-3
# Random tiny UNets predict x0 far off the data range (latents up to ~150), and every step divides
# the noise prediction by sqrt(alpha_t) (~0.07 at t=999) and CFG multiplies it by w: float32
# reordering between ORT and torch (~1e-6 per call) reaches ~1e-3 absolute there. Relative to the
# latents' scale it stays ~1e-5; the decoded images, what is served, stay within ORT_ATOL.
ORT_LATENT_RTOL = 1e-4
ROOT = Path(__file__).resolve().parent.parent


def _generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# ---------------------------------------------------------------------------------------------
# The published usage of each model, as diffusers code (model cards / papers; see CHECKPOINTS.md)
# ---------------------------------------------------------------------------------------------


def _full_unet_pipeline(cls: type, sources: Sources) -> Any:
    base = StableDiffusionPipeline.from_pretrained(sources.teacher)
    return cls(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=UNet2DConditionModel.from_pretrained(Path(sources.student) / "unet"),
        scheduler=LCMScheduler.from_pretrained(sources.student, subfolder="scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _lora_pipeline(sources: Sources, scheduler: Callable[[Any], Any]) -> Any:
    pipe = StableDiffusionPipeline.from_pretrained(sources.teacher)
    pipe.scheduler = scheduler(pipe.scheduler.config)
    pipe.load_lora_weights(str(sources.student))
    pipe.fuse_lora()
    return pipe


def published_usage(kind: str, sources: Sources) -> tuple[Any, dict[str, Any]]:
    """(diffusers pipeline, call kwargs) exactly as the kind's paper / model card samples it."""
    if kind == "cd":  # supplement A: CD-SD1.5, 5 steps of the multistep consistency sampler, CFG w = 8
        return _full_unet_pipeline(StableDiffusionPipeline, sources), dict(num_inference_steps=5, guidance_scale=8.0)
    if kind == "lcm":  # SimianLuo/LCM_Dreamshaper_v7: LatentConsistencyModelPipeline, 4 steps, w = 8
        return _full_unet_pipeline(LatentConsistencyModelPipeline, sources), dict(num_inference_steps=4, guidance_scale=8.0)
    if kind == "lcm-lora":  # latent-consistency/lcm-lora-sdv1-5
        return _lora_pipeline(sources, LCMScheduler.from_config), dict(num_inference_steps=4, guidance_scale=0.0)
    if kind == "hyper-sd":  # ByteDance/Hyper-SD: TCD, guidance 0, eta passed to the call
        return _lora_pipeline(sources, TCDScheduler.from_config), dict(num_inference_steps=4, guidance_scale=0.0, eta=0.3)
    if kind == "flash":  # jasperai/flash-sd
        trailing = lambda config: LCMScheduler.from_config(config, timestep_spacing="trailing")  # noqa: E731
        return _lora_pipeline(sources, trailing), dict(num_inference_steps=4, guidance_scale=0.0)
    raise AssertionError(kind)


# ---------------------------------------------------------------------------------------------
# Fixtures: one tiny teacher and reward, one export per kind (on first use), shared by the module
# ---------------------------------------------------------------------------------------------


@dataclass
class Exported:
    kind: str
    sources: Sources
    repository: Path
    summary: ExportSummary
    deployment: Deployment
    models: LoadedModels

    def torch_pipeline(self, deployment: Deployment | None = None) -> AdaptivePipeline:
        dep = deployment or self.deployment
        engines = Engines(**{name: TorchEngine(self.models.modules[name], spec) for name, spec in dep.specs().items()})
        return AdaptivePipeline(engines, dep, load_tokenizers(self.repository, dep))

    def student_settings(self) -> GenerationSettings:
        return replace(self.deployment.defaults, strategy=Strategy.STUDENT_ONLY)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("students")
    reward = write_tiny_image_reward(root / "reward")
    return {"root": root, "teacher": write_teacher(root / "teacher", "tiny"), "reward": reward, "reward_config": reward.with_name(CONFIG_NAME)}


def _sources(base: dict[str, Path], kind: str, student: Path, **kw: Any) -> Sources:
    return Sources(teacher=base["teacher"], student=student, student_kind=kind, reward=base["reward"], reward_config=base["reward_config"], **kw)


@pytest.fixture(scope="module")
def exports(base) -> Callable[[str], Exported]:
    cache: dict[str, Exported] = {}

    def get(kind: str) -> Exported:
        if kind not in cache:
            sources = _sources(base, kind, write_student(kind, base["root"] / f"student-{kind}", "tiny"))
            repo = base["root"] / f"repo-{kind}"
            summary = export_repository(sources, repo, preset="tiny", progress=False)  # no calibration: student_only needs no tau
            cache[kind] = Exported(kind, sources, repo, summary, Deployment.load(assets_dir(repo)), load_sources(sources))
        return cache[kind]

    return get


# ---------------------------------------------------------------------------------------------
# Every kind: exported settings, diffusers parity, ONNX Runtime parity
# ---------------------------------------------------------------------------------------------

# kind -> (scheduler class, step kwargs, student CFG, guidance embedding dim, default steps)
RECORDED = {
    "cd": ("LCMScheduler", {}, True, None, 5),
    "lcm": ("LCMScheduler", {}, False, 256, 4),
    "lcm-lora": ("LCMScheduler", {}, False, None, 4),
    "hyper-sd": ("TCDScheduler", {"eta": 0.3}, False, None, 4),
    "flash": ("LCMScheduler", {}, False, None, 4),
}


@pytest.mark.parametrize("kind", KINDS)
def test_the_repository_records_the_kind_and_its_published_sampler(exports, kind):
    e = exports(kind)
    cls, step_kwargs, cfg, cond_dim, steps = RECORDED[kind]
    dep = e.deployment
    assert dep.student_kind == kind
    assert (dep.student_scheduler.cls, dep.student_scheduler.step_kwargs) == (cls, step_kwargs)
    assert (dep.student_uses_cfg, dep.timestep_cond_dim, dep.defaults.student_steps) == (cfg, cond_dim, steps)
    assert dep.teacher_scheduler.cls == "DPMSolverMultistepScheduler"
    if kind == "flash":
        assert dep.student_scheduler.config["timestep_spacing"] == "trailing"
    assert {r.component for r in e.summary.parity} == {"text_encoder", "unet_student", "unet_teacher", "vae_decoder", "image_reward"}
    assert max(r.max_abs_error for r in e.summary.parity) < ORT_ATOL


@torch.no_grad()
@pytest.mark.parametrize("kind", KINDS)
def test_student_only_equals_the_published_diffusers_usage(exports, kind):
    e = exports(kind)
    pipe, call = published_usage(kind, e.sources)
    settings = e.student_settings()
    assert settings.student_steps == call["num_inference_steps"]  # the recorded default is the published one
    ours = e.torch_pipeline()(PROMPTS, SEEDS, settings)
    ref = pipe(PROMPTS, generator=_generators(SEEDS), output_type="latent", **call).images
    err = _max_err(ours.latents, ref)
    print(f"[{kind}] student_only, torch engines vs diffusers: max abs latent error {err:.2e}")
    assert err < LATENT_ATOL, f"{kind}: max abs latent error {err:.2e} vs the published diffusers usage"
    assert list(ours.unet_steps) == [call["num_inference_steps"]] * len(PROMPTS)


@torch.no_grad()
@pytest.mark.parametrize("kind", KINDS)
def test_onnxruntime_student_equals_torch(exports, kind):
    e = exports(kind)
    settings = e.student_settings()
    a = e.torch_pipeline()(PROMPTS, SEEDS, settings)
    b = inprocess_pipeline(e.repository)(PROMPTS, SEEDS, settings)
    err, scale = _max_err(a.latents, b.latents), float(a.latents.abs().max())
    image_err = _max_err(a.images_float, b.images_float)
    print(f"[{kind}] student_only, ONNX Runtime vs torch engines: max abs latent error {err:.2e} (latents up to {scale:.0f}), image error {image_err:.2e}")
    assert image_err < ORT_ATOL, f"{kind}: ORT vs torch images differ by {image_err:.2e}"
    assert err < ORT_LATENT_RTOL * scale, f"{kind}: ORT vs torch latents differ by {err:.2e} at scale {scale:.0f}"


@torch.no_grad()
def test_tcd_eta_is_passed_to_every_scheduler_step(exports):
    e = exports("hyper-sd")
    pipe, call = published_usage("hyper-sd", e.sources)
    settings = e.student_settings()
    deterministic = pipe(PROMPTS, generator=_generators(SEEDS), output_type="latent", **{**call, "eta": 0.0}).images
    ours = e.torch_pipeline()(PROMPTS, SEEDS, settings).latents
    assert _max_err(ours, deterministic) > 100 * LATENT_ATOL, "eta=0.3 and eta=0 agree: the tolerance could not tell"
    dep = replace(e.deployment, student_scheduler=replace(e.deployment.student_scheduler, step_kwargs={"eta": 0.0}))
    assert _max_err(e.torch_pipeline(dep)(PROMPTS, SEEDS, settings).latents, deterministic) < LATENT_ATOL


@torch.no_grad()
def test_lcm_guidance_scale_reaches_the_w_embedding(exports):
    e = exports("lcm")
    pipe, call = published_usage("lcm", e.sources)
    other_w = pipe(PROMPTS, generator=_generators(SEEDS), output_type="latent", **{**call, "guidance_scale": 2.0}).images
    ours = e.torch_pipeline()(PROMPTS, SEEDS, e.student_settings()).latents
    assert _max_err(ours, other_w) > 100 * LATENT_ATOL


@pytest.mark.parametrize("kind", LORA_KINDS)
def test_the_lora_is_fused_into_the_student_and_the_teacher_stays_untouched(exports, kind):
    e = exports(kind)
    student = e.models.raw["unet_student"]
    teacher = e.models.raw["unet_teacher"].state_dict()
    on_disk = UNet2DConditionModel.from_pretrained(Path(e.sources.teacher) / "unet").state_dict()
    assert all(torch.equal(teacher[k], on_disk[k]) for k in on_disk), "fusing changed the teacher"
    assert not any("lora" in name for name, _ in student.named_modules()), "LoRA layers would be exported"
    changed = {k.removesuffix(".weight") for k, v in student.state_dict().items() if not torch.equal(v, teacher[k])}
    assert changed == set(lora_tensors("tiny"))  # exactly the layers the LoRA adapts


def test_every_lora_key_layout_fuses_to_w_plus_up_down(base):
    teacher_unet = UNet2DConditionModel.from_pretrained(base["teacher"] / "unet")
    kind = student_kind("hyper-sd")
    fused = {
        layout: kind.load_unet(write_lora_student(base["root"] / f"layout-{layout}", "hyper-sd", layout, seed=7), base["teacher"]).state_dict()
        for layout in LORA_KEY_LAYOUTS
    }
    base_w = teacher_unet.state_dict()
    for name, (down, up) in lora_tensors("tiny", seed=7).items():
        w = base_w[f"{name}.weight"]
        # kohya's alpha / rank = 0.5 is compensated in the file by a doubled lora_up: both are W + up @ down.
        expected = w + (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
        for layout, state in fused.items():
            assert _max_err(state[f"{name}.weight"], expected) < 1e-5, f"{layout}: {name}"


def test_a_kohya_lora_with_the_original_ldm_module_names_is_checked_and_fused_by_diffusers_conversion(base):
    lora = write_lora_student(base["root"] / "layout-ldm-summary", "lcm-lora", "kohya-ldm")
    unet = UNet2DConditionModel.from_pretrained(base["teacher"] / "unet")
    keys = load_file(str(lora))
    assert "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_middle_block_1_proj_in.lora_up.weight" in keys
    assert "lora_unet_output_blocks_0_0_in_layers_2.alpha" in keys  # up_blocks.0.resnets.0.conv1
    summary = check_lora(lora, unet)
    assert (summary.layout, summary.modules) == ("kohya-ldm", len(lora_tensors("tiny")))


def test_ldm_names_follow_the_original_unet_numbering():
    # SD1.5 proper has two layers per block: input_blocks 1, 2 are down block 0, 3 its downsampler, 4 block 1.
    assert ldm_module_name("down_blocks.1.attentions.0.proj_in", layers_per_block=2) == "input_blocks.4.1.proj_in"
    assert ldm_module_name("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k", layers_per_block=2) == "output_blocks.11.1.transformer_blocks.0.attn2.to_k"
    assert ldm_module_name("mid_block.resnets.1.conv1", layers_per_block=2) == "middle_block.2.in_layers.2"
    assert ldm_module_name("down_blocks.0.resnets.1.time_emb_proj", layers_per_block=2) == "input_blocks.2.0.emb_layers.1"


# ---------------------------------------------------------------------------------------------
# Bad checkpoints fail with a message naming the problem
# ---------------------------------------------------------------------------------------------


def _corrupt(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))
    return path


def _first(state: dict[str, torch.Tensor], suffix: str) -> str:
    return sorted(k for k in state if k.endswith(suffix))[0]


def _drop(suffix: str) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda s: s.pop(_first(s, suffix))


def _reshape(suffix: str, shape: tuple[int, ...]) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(s: dict[str, torch.Tensor]) -> None:
        s[_first(s, suffix)] = torch.zeros(shape)

    return edit


def _add(key: str, shape: tuple[int, ...]) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda s: s.__setitem__(key, torch.zeros(shape))


def _add_pair(name: str, down: tuple[int, ...], up: tuple[int, ...]) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(s: dict[str, torch.Tensor]) -> None:
        s[f"{name}.lora_down.weight"], s[f"{name}.lora_up.weight"], s[f"{name}.alpha"] = torch.zeros(down), torch.zeros(up), torch.tensor(2.0)

    return edit


TE_KEY = "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"
LORA_DAMAGE = {
    "kohya lora_up missing": ("kohya", _drop("attn1_to_q.lora_up.weight"), r"attn1_to_q\.lora_up\.weight is missing \(its pair .*lora_down\.weight is there\)"),
    "diffusers lora_B missing": ("diffusers", _drop("attn2.to_k.lora_B.weight"), r"attn2\.to_k\.lora_B\.weight is missing"),
    "wrong rank-side shape": ("diffusers", _reshape("attn1.to_q.lora_A.weight", (4, 31)), r"lora_A\.weight has shape \[4, 31\], expected \[4, 32\] for .*to_q = Linear\(32 -> 32\)"),
    "conv factor shape": ("kohya", _reshape("proj_in.lora_down.weight", (4, 32, 3, 3)), r"proj_in\.lora_down\.weight has shape \[4, 32, 3, 3\], expected \[4, 32, 1, 1\]"),
    "no such module": ("diffusers", _add("unet.down_blocks.7.attentions.0.proj_in.lora_A.weight", (4, 32)), r"down_blocks\.7\.attentions\.0\.proj_in\.lora_A\.weight names no module of the teacher UNet"),
    "text encoder LoRA": ("kohya", _add(TE_KEY, (4, 32)), r"also adapts the text encoder \(lora_te_text_model"),
    "foreign tensor": ("kohya", _add("lora_unet_mid_block_resnets_0_conv1.hada_w1_a", (4, 4)), r"unsupported LoRA tensor .*hada_w1_a"),
    "LDM name of no module": ("kohya-ldm", _add_pair("lora_unet_input_blocks_40_1_proj_in", (4, 32, 1, 1), (32, 4, 1, 1)), r"lora_unet_input_blocks_40_1_proj_in\.lora_down\.weight names no module of the teacher UNet"),
    "not a LoRA": ("diffusers", _add("model.diffusion_model.out.2.weight", (4,)), r"unrecognised LoRA key model\.diffusion_model"),
}


@pytest.mark.parametrize("damage", LORA_DAMAGE, ids=list(LORA_DAMAGE))
def test_a_damaged_lora_is_refused_naming_the_key(base, tmp_path, damage):
    layout, edit, message = LORA_DAMAGE[damage]
    lora = _corrupt(write_lora_student(tmp_path, "lcm-lora", layout), edit)
    with pytest.raises(SourceError, match=message) as info:
        student_kind("lcm-lora").load_unet(lora, base["teacher"])
    assert str(lora) in str(info.value)


def test_a_lora_path_must_name_one_safetensors_file(base, tmp_path):
    load = student_kind("flash").load_unet
    (tmp_path / "a.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SourceError, match=r"a\.safetensors: not a readable safetensors file"):
        load(tmp_path / "a.safetensors", base["teacher"])
    for name in ("one", "two"):  # without diffusers' default file name there is no telling which is meant
        write_lora_student(tmp_path / "two", "flash").rename(tmp_path / "two" / f"{name}.safetensors")
    with pytest.raises(SourceError, match=r"several \.safetensors files \(one\.safetensors, two\.safetensors\); pass the file itself"):
        load(tmp_path / "two", base["teacher"])
    with pytest.raises(SourceError, match=r"is a full UNet folder, not a LoRA; use --student-kind cd"):
        load(base["teacher"], base["teacher"])
    with pytest.raises(SourceError, match=r"student: .*nowhere does not exist"):
        load(tmp_path / "nowhere", base["teacher"])


@pytest.mark.parametrize(
    "damage, message",
    [
        (_drop("attn1.to_q.weight"), r"lacks 1 weight\(s\) its config\.json needs: down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn1\.to_q\.weight"),
        (_reshape("attn1.to_k.weight", (31, 32)), r"down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn1\.to_k\.weight expected shape torch\.Size\(\[32, 32\]\), but got torch\.Size\(\[31, 32\]\)"),
    ],
    ids=["missing weight", "wrong shape"],
)
def test_a_damaged_full_unet_is_refused_naming_the_weight(base, tmp_path, damage, message):
    student = write_cd_student(tmp_path / "cd", "tiny")
    _corrupt(student / "unet" / "diffusion_pytorch_model.safetensors", damage)
    with pytest.raises(SourceError, match=message):
        student_kind("cd").load_unet(student, base["teacher"])


def test_a_student_with_another_default_resolution_loads(base, tmp_path):
    # LCM_Dreamshaper_v7's unet/config.json says sample_size 96 over SD1.5's 64: a default resolution only.
    student = write_lcm_student(tmp_path / "lcm")
    config = student / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "sample_size": 24}))
    models = load_sources(_sources(base, "lcm", student))
    assert models.raw["unet_student"].config.sample_size == 24
    assert models.dims["latent_size"] == models.raw["unet_teacher"].config.sample_size == 16  # served at the teacher's size


@pytest.mark.parametrize("attr", STUDENT_MUST_MATCH)
def test_a_student_must_share_channels_and_cross_attention_width_with_the_teacher(attr):
    config = dict(cross_attention_dim=768, in_channels=4, out_channels=4, sample_size=64, addition_embed_type=None, projection_class_embeddings_input_dim=None)
    teacher = SimpleNamespace(config=SimpleNamespace(**config))
    _check_student_fits(SimpleNamespace(config=SimpleNamespace(**{**config, "sample_size": 96})), teacher)
    with pytest.raises(SourceError, match=rf"student: {attr} 7 does not match the teacher's {config[attr]}"):
        _check_student_fits(SimpleNamespace(config=SimpleNamespace(**{**config, attr: 7})), teacher)


def test_a_checkpoint_of_the_wrong_kind_is_refused_with_the_right_kind(base, tmp_path):
    cd, lcm = write_cd_student(tmp_path / "cd"), write_lcm_student(tmp_path / "lcm")
    with pytest.raises(SourceError, match=r"has a guidance embedding \(time_cond_proj_dim=256\).*use --student-kind lcm"):
        student_kind("cd").load_unet(lcm, base["teacher"])
    with pytest.raises(SourceError, match=r"no guidance embedding .*--student-kind cd"):
        student_kind("lcm").load_unet(cd, base["teacher"])
    with pytest.raises(SourceError, match=r"is a file.*a LoRA takes --student-kind lcm-lora, hyper-sd or flash"):
        student_kind("cd").load_unet(write_lora_student(tmp_path / "lora", "flash"), base["teacher"])
    with pytest.raises(SourceError, match=re.escape(f"--student-kind 'nope' is not supported; choose one of {sorted(STUDENT_KINDS)}")):
        student_kind("nope")


def test_bad_paths_and_inapplicable_sampler_options_fail_before_any_weight_is_loaded(base, tmp_path, monkeypatch):
    import export.checkpoints.sources

    loaded = []
    # The first weights load_sources would read are the teacher's: a check that comes after fails here.
    monkeypatch.setattr(export.checkpoints.sources, "load_teacher", lambda path: loaded.append(path))
    lora = base["root"] / "student-flash" / LORA_FILE
    if not lora.exists():
        write_student("flash", lora.parent)
    cases = {
        r"teacher: .*missing-teacher does not exist": replace(_sources(base, "flash", lora), teacher=tmp_path / "missing-teacher"),
        r"teacher: .* is missing \['model_index\.json', 'unet'": replace(_sources(base, "flash", lora), teacher=tmp_path),
        r"student: .*missing-lora does not exist": _sources(base, "flash", tmp_path / "missing-lora"),
        r"reward: ImageReward checkpoint .*missing\.pt does not exist": replace(_sources(base, "flash", lora), reward=tmp_path / "missing.pt"),
        r"--eta does not apply to --student-kind flash; it applies to \['hyper-sd'\]": _sources(base, "flash", lora, sampler_overrides={"eta": 0.5}),
    }
    for message, sources in cases.items():
        with pytest.raises(SourceError, match=message):
            load_sources(sources)
        assert loaded == [], f"{message}: weights were loaded before the error"


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def test_python_m_export_with_an_unsupported_kind_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "export", "--student-kind", "nope", "--teacher", str(tmp_path), "--student", str(tmp_path), "--reward", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"python -m export: error: --student-kind 'nope' is not supported; choose one of {sorted(STUDENT_KINDS)}"]


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE=1", "endpoint not answering"])
def test_a_hub_id_without_a_reachable_hub_fails_asking_for_a_local_path(base, tmp_path, monkeypatch, capsys, how):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # nothing cached to fall back on
    if how == "HF_HUB_OFFLINE=1":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    code = main(["--teacher", "runwayml/stable-diffusion-v1-5", "--student", "latent-consistency/lcm-lora-sdv1-5", "--student-kind", "lcm-lora", "--reward", str(base["reward"]), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--teacher runwayml/stable-diffusion-v1-5: not a local path" in err[0]
    assert "the hub is unreachable" in err[0] and "pass the local path" in err[0]


def test_cli_usage_errors_are_one_line_with_status_2(base, capsys):
    cases = [
        (["--preset", "tiny", "--teacher", str(base["teacher"])], "--preset writes its own random-weight checkpoints; drop --teacher"),
        (["--teacher", str(base["teacher"])], "missing --student, --student-kind, --reward"),
        (["--preset", "huge"], "--preset 'huge' is not a preset"),
        (["--preset", "tiny", "--refiner", "preset"], "--refiner: the tiny preset is sd15; only an SDXL preset (tiny-xl) has a refiner"),
        (["--preset", "tiny-xl", "--refiner", str(base["teacher"])], f"drop --refiner {base['teacher']} (with --preset, --refiner preset writes the preset's refiner)"),
        (["--preset", "tiny", "--student-kind", "flash", "--eta", "0.5"], "--eta does not apply to --student-kind flash"),
        (["--preset", "tiny", "--sigma", "1.5"], "--sigma: got 1.5; allowed range [0.001, 1]"),
        (["--preset", "tiny", "--student-steps", "four"], "argument --student-steps: invalid int value: 'four'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


def test_cli_exports_a_hyper_sd_lora_recording_sampler_defaults_and_tau(base, tmp_path, capsys):
    lora = write_lora_student(tmp_path / "hyper", "hyper-sd")
    out = tmp_path / "hyper-sd" / "repository"
    argv = [
        "--teacher", str(base["teacher"]), "--student", str(lora), "--student-kind", "hyper-sd",
        "--reward", str(base["reward"]), "--reward-config", str(base["reward_config"]), "--out", str(out),
        "--eta", "0.5", "--student-steps", "2", "--teacher-steps", "6", "--k", "40",
        "--calibration-prompts", str(ROOT / "benchmarks" / "prompts" / "heldout.txt"), "--calibration-count", "4", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    dep = Deployment.load(assets_dir(out))
    assert dep.student_kind == "hyper-sd" and dep.student_scheduler.step_kwargs == {"eta": 0.5}
    assert (dep.defaults.student_steps, dep.defaults.teacher_steps, dep.defaults.k) == (2, 6, 40.0)
    assert dep.calibration is not None and dep.calibration.prompts == 4
    for line in ("unet_student", "TCDScheduler", "step(eta=0.5)", f"default tau   {dep.calibration.tau(40):.4f} (k=40", "serve it:"):
        assert line in printed, line
    assert not out.with_name("repository.partial").exists()
    # A second run neither silently keeps nor silently replaces the export.
    assert main(argv) == 2
    assert "already holds an export; pass --force" in capsys.readouterr().err
    assert (assets_dir(out) / MANIFEST).is_file()


def test_every_kind_has_a_published_source_and_a_tiny_writer(tmp_path):
    # KINDS are the SD1.5 kinds; the SDXL-only ones are specified in tests/test_sdxl_students.py.
    assert {name for name, k in STUDENT_KINDS.items() if "sd15" in k.families} == set(KINDS)
    for kind in STUDENT_KINDS:
        assert STUDENT_KINDS[kind].source, kind
    assert os.path.basename(write_student("lcm-lora", tmp_path / "l")) == LORA_FILE
