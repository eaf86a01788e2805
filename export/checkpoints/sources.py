"""Load checkpoints (teacher pipeline folder, student, ImageReward) into exportable torch modules.

The student is whatever its kind says (a full UNet, or a LoRA fused into a fresh copy of the
teacher UNet); either way it leaves here as one plain ``UNet2DConditionModel``, and the teacher
UNet stays unfused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from bll_python.deployment import SchedulerRecipe
from bll_python.families import SD15, SDXL, Family
from export.checkpoints.errors import SourceError
from export.checkpoints.samplers import family_teacher_sampler, teacher_recipe, teacher_sampler
from export.checkpoints.students import StudentKind, apply_sampler_overrides, check_sampler_overrides, student_kind
from export.checkpoints.unet import load_unet_folder
from export.models.wrappers import export_modules

TEACHER_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")
# What an SDXL pipeline folder has beyond SD1.5's.
XL_PARTS = ("text_encoder_2", "tokenizer_2")


def teacher_family(path: Path) -> Family:
    """The family a teacher pipeline folder belongs to, by its ``model_index.json``: an SDXL folder
    names an XL pipeline class and has a second text encoder."""
    index = Path(path) / "model_index.json"
    try:
        cls = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, ValueError) as err:
        raise SourceError(f"teacher: cannot read {index}: {err}") from err
    return SDXL if "XL" in cls or "text_encoder_2" in json.loads(index.read_text()) else SD15


@dataclass
class Sources:
    teacher: Path
    student: Path
    student_kind: str
    reward: Path
    reward_config: Path | None = None
    # Tunable sampler ``step`` arguments of the kind, e.g. ``{"eta": 0.5}`` for hyper-sd's TCD.
    sampler_overrides: dict[str, Any] = field(default_factory=dict)
    # The teacher's solver, a name in ``export.checkpoints.samplers.TEACHER_SAMPLERS``; None: the
    # family's own (DPM-Solver++ 2M for SD1.5, UniPC for SDXL, as the paper runs them).
    teacher_sampler: str | None = None
    # SDXL-Refiner (an img2img pipeline folder), used to refine rows whose sigma is at most
    # ``refiner_max_sigma``; larger rollbacks stay with the base teacher (supplement D.3).
    refiner: Path | None = None
    refiner_max_sigma: float = 0.5


@dataclass
class LoadedModels:
    """The five exportable modules plus what serving needs to know about them."""

    modules: dict[str, nn.Module]  # component name -> its export wrapper (takes the spec's inputs in order)
    tokenizer_dir: Path
    teacher_scheduler: SchedulerRecipe
    student_scheduler: SchedulerRecipe
    kind: StudentKind
    dims: dict[str, Any]
    # The loaded checkpoint parts (diffusers/transformers objects, the scorer) by the records' ``source``
    # names, plus the teacher's noise schedule; also what reference diffusers pipelines are built from.
    raw: dict[str, Any]
    family: Family = SD15
    # SDXL's second tokenizer (OpenCLIP's padding), None for SD1.5.
    tokenizer_2_dir: Path | None = None


def _require_dir(path: Path, what: str, must_have: tuple[str, ...]) -> None:
    if not path.exists():
        raise SourceError(f"{what}: {path} does not exist")
    missing = [m for m in must_have if not (path / m).exists()]
    if missing:
        raise SourceError(f"{what}: {path} is missing {missing}")


def _checked(load: Any, folder: Path, what: str) -> Any:
    """``from_pretrained`` that refuses missing weights (both libraries only log them)."""
    try:
        model, info = load(folder, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise SourceError(f"{what}: cannot load {folder}: {' '.join(str(err).split())}") from err
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise SourceError(f"{what}: {folder} lacks {len(missing)} weight(s) its config needs, e.g. {missing[:3]}")
    return model.eval()


def load_teacher(path: Path) -> dict[str, Any]:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    _require_dir(path, "teacher", TEACHER_PARTS)
    family = teacher_family(path)
    schedule_file = path / "scheduler" / "scheduler_config.json"
    if not schedule_file.is_file():
        raise SourceError(f"teacher: {schedule_file} does not exist")
    schedule = {k: v for k, v in json.loads(schedule_file.read_text()).items() if not k.startswith("_")}
    parts = {
        "family": family,
        "text_encoder": _checked(CLIPTextModel.from_pretrained, path / "text_encoder", "teacher text_encoder"),
        "unet": load_unet_folder(path / "unet", "teacher"),
        "vae": _checked(AutoencoderKL.from_pretrained, path / "vae", "teacher vae"),
        "schedule": schedule,
        "tokenizer_dir": path / "tokenizer",
        "tokenizer_2_dir": None,
        "index": json.loads((path / "model_index.json").read_text()),
    }
    if family.dual_text:
        _require_dir(path, "SDXL teacher", XL_PARTS)
        parts["text_encoder_2"] = _checked(CLIPTextModelWithProjection.from_pretrained, path / "text_encoder_2", "teacher text_encoder_2")
        parts["tokenizer_2_dir"] = path / "tokenizer_2"
    return parts


def load_refiner(path: Path, teacher: dict[str, Any]) -> dict[str, Any]:
    """SDXL-Refiner's UNet and schedule. Its second tower must be the teacher's (the deployment
    encodes the prompt once): SDXL-Refiner 1.0 ships the same OpenCLIP bigG as SDXL-Base 1.0."""
    import torch
    from transformers import CLIPTextModelWithProjection

    if not teacher["family"].dual_text:
        raise SourceError(f"refiner: {path} refines SDXL; the teacher is {teacher['family'].name}")
    _require_dir(path, "refiner", ("model_index.json", "unet", "text_encoder_2", "scheduler"))
    unet = load_unet_folder(path / "unet", "refiner")
    tower = _checked(CLIPTextModelWithProjection.from_pretrained, path / "text_encoder_2", "refiner text_encoder_2")
    ours, theirs = teacher["text_encoder_2"].state_dict(), tower.state_dict()
    if ours.keys() != theirs.keys() or any(not torch.equal(ours[k], theirs[k]) for k in ours):
        raise SourceError(f"refiner: {path / 'text_encoder_2'} differs from the teacher's; the refiner must share the base model's second text encoder")
    schedule = {k: v for k, v in json.loads((path / "scheduler" / "scheduler_config.json").read_text()).items() if not k.startswith("_")}
    return {"unet": unet, "schedule": schedule}


def _check_paths(sources: Sources, kind: StudentKind) -> None:
    """Everything that can be checked without loading a weight, so a typo fails in milliseconds."""
    _require_dir(Path(sources.teacher), "teacher", TEACHER_PARTS)
    if not Path(sources.student).exists():
        raise SourceError(f"student: {sources.student} does not exist")
    reward = Path(sources.reward)
    if not reward.exists():
        raise SourceError(f"reward: ImageReward checkpoint {reward} does not exist")
    if not reward.is_file():
        raise SourceError(f"reward: {reward} is a folder; pass the ImageReward.pt file itself")
    if sources.reward_config is not None and not Path(sources.reward_config).is_file():
        raise SourceError(f"reward config: {sources.reward_config} does not exist")
    check_sampler_overrides(kind, sources.sampler_overrides)
    if sources.teacher_sampler is not None:
        teacher_sampler(sources.teacher_sampler)


# What the student must share with the teacher: the text encoder's states it attends to, and the
# latents the VAE decodes. ``sample_size`` is deliberately absent: it is only a UNet's default
# resolution (LCM_Dreamshaper_v7 says 96 over SD1.5's 64) and the served size comes from the teacher.
# SDXL UNets also share the pooled-prompt and size conditioning (``addition_embed_type`` and the
# projection's width).
STUDENT_MUST_MATCH = ("cross_attention_dim", "in_channels", "out_channels", "addition_embed_type", "projection_class_embeddings_input_dim")


def _check_student_fits(student: nn.Module, teacher: nn.Module) -> None:
    for attr in STUDENT_MUST_MATCH:
        got, want = getattr(student.config, attr), getattr(teacher.config, attr)
        if got != want:
            raise SourceError(f"student: {attr} {got} does not match the teacher's {want}")


def size_multiple(vae: nn.Module, *unets: nn.Module) -> int:
    """The pixel multiple every image side must be: the VAE's 8x times each UNet's downsampling.

    diffusers' pipelines take any multiple of 8 and let the UNet pass odd skip sizes to its
    upsamplers; that branch depends on the input size, and an exported graph keeps the branch it was
    traced with, so served sizes keep every UNet level's side whole.
    """
    levels = max(len(u.config.block_out_channels) - 1 for u in unets)
    return 2 ** (len(vae.config.block_out_channels) - 1) * 2**levels


def vae_force_upcast(family: Family, vae: Any) -> bool:
    """Whether the VAE must decode in FP32: its config says ``force_upcast`` (SDXL's VAE, whose
    activations overflow FP16) and the family's pipelines honour it. The fp16-fix VAE says false."""
    return family.honours_vae_force_upcast and bool(getattr(vae.config, "force_upcast", True))


def load_sources(sources: Sources) -> LoadedModels:
    from export.models.image_reward import CheckpointError, load_image_reward

    kind = student_kind(sources.student_kind)
    _check_paths(sources, kind)
    teacher = load_teacher(Path(sources.teacher))
    student_unet = kind.load_unet(Path(sources.student), Path(sources.teacher))
    try:
        reward = load_image_reward(Path(sources.reward), sources.reward_config)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise SourceError(f"reward: {' '.join(str(err).split())}") from err
    vae, unet, clip = teacher["vae"], teacher["unet"], teacher["text_encoder"]
    _check_student_fits(student_unet, unet)
    student_scheduler = apply_sampler_overrides(kind, kind.scheduler(Path(sources.student), teacher["schedule"]), sources.sampler_overrides)
    family: Family = teacher["family"]
    sampler = sources.teacher_sampler or family_teacher_sampler(family.name)
    dims = dict(
        family=family.name,
        seq_len=clip.config.max_position_embeddings,
        text_hidden=clip.config.hidden_size,
        latent_channels=unet.config.in_channels,
        latent_size=unet.config.sample_size,
        vae_scale=2 ** (len(vae.config.block_out_channels) - 1),
        timestep_cond_dim=student_unet.config.time_cond_proj_dim,
        size_multiple=size_multiple(vae, unet, student_unet),
        vae_force_upcast=vae_force_upcast(family, vae),
    )
    raw = {"text_encoder": clip, "unet_teacher": unet, "unet_student": student_unet, "vae": vae, "image_reward": reward, "schedule": teacher["schedule"]}
    if family.dual_text:
        clip_2 = teacher["text_encoder_2"]
        raw["text_encoder_2"] = clip_2
        dims.update(
            text_hidden_2=clip_2.config.hidden_size,
            pooled_dim=clip_2.config.projection_dim,
            time_ids_dim=(unet.config.projection_class_embeddings_input_dim - clip_2.config.projection_dim) // unet.config.addition_time_embed_dim,
            zero_empty_negative=bool(teacher["index"].get("force_zeros_for_empty_prompt", False)),
        )
    refiner_scheduler = None
    if sources.refiner is not None:
        refiner = load_refiner(Path(sources.refiner), teacher)
        r = refiner["unet"]
        raw["unet_refiner"] = r
        refiner_scheduler = teacher_recipe(refiner["schedule"], sampler)
        dims.update(
            optional_components=["unet_refiner"],
            refiner_max_sigma=float(sources.refiner_max_sigma),
            refiner_time_ids_dim=(r.config.projection_class_embeddings_input_dim - dims["pooled_dim"]) // r.config.addition_time_embed_dim,
            refiner_scheduler=refiner_scheduler,
            size_multiple=size_multiple(vae, unet, student_unet, r),
        )
    return LoadedModels(
        modules=export_modules(raw, family, dims.get("optional_components", [])),
        tokenizer_dir=teacher["tokenizer_dir"],
        teacher_scheduler=teacher_recipe(teacher["schedule"], sampler),
        student_scheduler=student_scheduler,
        kind=kind,
        dims=dims,
        raw=raw,
        family=family,
        tokenizer_2_dir=teacher["tokenizer_2_dir"],
    )
