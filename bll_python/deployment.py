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

from bll_python.components import COMPONENTS
from bll_python.load_policy import LoadPolicySettings
from bll_python.settings import GenerationSettings, SettingsError, check_number
from bll_python.specs import ComponentSpec

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
    # None: k is static. Otherwise the BLS lowers k toward a floor under load (bll_python.load_policy).
    load_policy: LoadPolicySettings | None = None

    # ------------------------------------------------------------------ specs

    @property
    def image_size(self) -> int:
        return self.latent_size * self.vae_scale

    def specs(self) -> dict[str, ComponentSpec]:
        """Every component's tensors at this deployment's dims, in component order."""
        return {name: c.deployment_spec(self) for name, c in COMPONENTS.items()}

    # ------------------------------------------------------------------ gate

    def requested_k(self, settings: GenerationSettings) -> float | None:
        """The percentile a batch asks for (its own k or the default); None when it gave tau."""
        if settings.tau is not None:
            return None
        return settings.k if settings.k is not None else self.default_k

    def resolve_tau(self, settings: GenerationSettings) -> float:
        if settings.tau is not None:
            return settings.tau
        if self.calibration is None:
            field_name = "k" if settings.k is not None else "tau"
            raise SettingsError(field_name, "this deployment has no calibration; pass tau explicitly")
        return self.calibration.tau(self.requested_k(settings))

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
        if d.get("load_policy"):
            d["load_policy"] = LoadPolicySettings(**d["load_policy"])
        return cls(**d)

    @classmethod
    def load(cls, directory: Path) -> "Deployment":
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no {MANIFEST} in {directory}: export a model first (python -m export --help)")
        return cls.from_json(json.loads(path.read_text()))
