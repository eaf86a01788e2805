"""What an export produced and how to serve it: dims, samplers, defaults and the calibrated gate.

The manifest is plain JSON written by ``export`` into the model repository, so the server needs
no flags: the student kind, its sampler, the teacher solver and the default ``tau`` all travel with
the weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bll_python.settings import GenerationSettings, SettingsError, check_number
from bll_python.specs import (
    ComponentSpec,
    image_reward_spec,
    text_encoder_spec,
    unet_spec,
    vae_decoder_spec,
)

MANIFEST = "deployment.json"


@dataclass
class SchedulerRecipe:
    """A diffusers scheduler class name, its config, and the extra ``set_timesteps``/``step`` kwargs."""

    cls: str
    config: dict[str, Any]
    set_timesteps_kwargs: dict[str, Any] = field(default_factory=dict)
    step_kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self):
        import diffusers

        return getattr(diffusers, self.cls).from_config(self.config)


@dataclass
class Calibration:
    """``percentiles[k]`` is the k-th percentile (k = 0..100) of student ImageReward scores."""

    percentiles: list[float]
    prompts: int
    settings: dict[str, Any]

    def tau(self, k: float) -> float:
        k = check_number("k", k)
        # Linear interpolation between the stored integer percentiles.
        return float(np.interp(k, np.arange(101), np.asarray(self.percentiles)))


@dataclass
class Deployment:
    preset: str
    student_kind: str
    seq_len: int
    text_hidden: int
    latent_channels: int
    latent_size: int
    vae_scale: int
    reward_text_len: int
    max_rows: int
    student_scheduler: SchedulerRecipe
    teacher_scheduler: SchedulerRecipe
    defaults: GenerationSettings
    default_k: float = 50.0
    timestep_cond_dim: int | None = None
    calibration: Calibration | None = None
    # The LCM guidance embedding replaces true CFG for students distilled with it.
    student_uses_cfg: bool = True

    # ------------------------------------------------------------------ specs

    @property
    def image_size(self) -> int:
        return self.latent_size * self.vae_scale

    def specs(self) -> dict[str, ComponentSpec]:
        rows, cfg_rows = self.max_rows, 2 * self.max_rows
        common = dict(latent_channels=self.latent_channels, latent_size=self.latent_size, seq_len=self.seq_len, text_hidden=self.text_hidden)
        return {
            "text_encoder": text_encoder_spec(seq_len=self.seq_len, hidden=self.text_hidden, max_batch=cfg_rows),
            "unet_student": unet_spec("unet_student", max_batch=cfg_rows, timestep_cond_dim=self.timestep_cond_dim, **common),
            "unet_teacher": unet_spec("unet_teacher", max_batch=cfg_rows, **common),
            "vae_decoder": vae_decoder_spec(latent_channels=self.latent_channels, latent_size=self.latent_size, scale=self.vae_scale, max_batch=rows),
            "image_reward": image_reward_spec(image_size=self.image_size, text_len=self.reward_text_len, max_batch=rows),
        }

    # ------------------------------------------------------------------ gate

    def resolve_tau(self, settings: GenerationSettings) -> float:
        if settings.tau is not None:
            return settings.tau
        if self.calibration is None:
            field_name = "k" if settings.k is not None else "tau"
            raise SettingsError(field_name, "this deployment has no calibration; pass tau explicitly")
        return self.calibration.tau(settings.k if settings.k is not None else self.default_k)

    # ------------------------------------------------------------------ io

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["defaults"] = self.defaults.as_dict()
        return d

    def save(self, directory: Path) -> Path:
        path = directory / MANIFEST
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Deployment":
        d = dict(d)
        d["student_scheduler"] = SchedulerRecipe(**d["student_scheduler"])
        d["teacher_scheduler"] = SchedulerRecipe(**d["teacher_scheduler"])
        d["defaults"] = GenerationSettings(**d["defaults"])
        if d.get("calibration"):
            d["calibration"] = Calibration(**d["calibration"])
        return cls(**d)

    @classmethod
    def load(cls, directory: Path) -> "Deployment":
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no {MANIFEST} in {directory}: export a model first (python -m export --help)")
        return cls.from_json(json.loads(path.read_text()))
