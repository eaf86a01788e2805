"""Load checkpoints (teacher pipeline folder, student, ImageReward) into exportable torch modules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from bll_python.deployment import SchedulerRecipe
from export import wrappers
from export.students import SourceError, StudentKind, load_full_unet, student_kind, teacher_recipe


@dataclass
class Sources:
    teacher: Path
    student: Path
    student_kind: str
    reward: Path
    reward_config: Path | None = None


@dataclass
class LoadedModels:
    """The five exportable modules plus what serving needs to know about them."""

    modules: dict[str, nn.Module]  # component name -> spec-ordered wrapper
    tokenizer_dir: Path
    teacher_scheduler: SchedulerRecipe
    student_scheduler: SchedulerRecipe
    kind: StudentKind
    dims: dict[str, Any]
    # The raw diffusers/transformers objects, for building reference diffusers pipelines.
    raw: dict[str, Any]


def _require_dir(path: Path, what: str, must_have: tuple[str, ...]) -> None:
    if not path.exists():
        raise SourceError(f"{what}: {path} does not exist")
    missing = [m for m in must_have if not (path / m).exists()]
    if missing:
        raise SourceError(f"{what}: {path} is missing {missing}")


def load_teacher(path: Path) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    _require_dir(path, "teacher", ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"))
    import json

    schedule = {k: v for k, v in json.loads((path / "scheduler" / "scheduler_config.json").read_text()).items() if not k.startswith("_")}
    return {
        "text_encoder": CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True),
        "unet": UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True),
        "vae": AutoencoderKL.from_pretrained(path / "vae", local_files_only=True),
        "schedule": schedule,
        "tokenizer_dir": path / "tokenizer",
    }


def load_sources(sources: Sources) -> LoadedModels:
    from export.image_reward import load_image_reward

    kind = student_kind(sources.student_kind)
    teacher = load_teacher(Path(sources.teacher))
    student_unet = load_full_unet(Path(sources.student))
    reward = load_image_reward(Path(sources.reward), sources.reward_config)
    vae, unet, clip = teacher["vae"], teacher["unet"], teacher["text_encoder"]
    if student_unet.config.cross_attention_dim != unet.config.cross_attention_dim:
        raise SourceError(
            f"student: cross_attention_dim {student_unet.config.cross_attention_dim} does not match the teacher's {unet.config.cross_attention_dim}"
        )
    dims = dict(
        seq_len=clip.config.max_position_embeddings,
        text_hidden=clip.config.hidden_size,
        latent_channels=unet.config.in_channels,
        latent_size=unet.config.sample_size,
        vae_scale=2 ** (len(vae.config.block_out_channels) - 1),
        timestep_cond_dim=student_unet.config.time_cond_proj_dim,
    )
    modules = {
        "text_encoder": wrappers.TextEncoder(clip),
        "unet_student": wrappers.UNet(student_unet),
        "unet_teacher": wrappers.UNet(unet),
        "vae_decoder": wrappers.VaeDecoder(vae),
        "image_reward": reward,
    }
    return LoadedModels(
        modules={k: m.eval() for k, m in modules.items()},
        tokenizer_dir=teacher["tokenizer_dir"],
        teacher_scheduler=teacher_recipe(teacher["schedule"]),
        student_scheduler=kind.scheduler(Path(sources.student), teacher["schedule"]),
        kind=kind,
        dims=dims,
        raw={"text_encoder": clip, "unet_teacher": unet, "unet_student": student_unet, "vae": vae, "schedule": teacher["schedule"]},
    )
