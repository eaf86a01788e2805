"""Every size, step count and rate of the shapes world in one place, as plain data.

``WorldConfig()`` is the full run (about an hour on two idle cores); ``WorldConfig.smoke()`` runs a
few steps of every stage, for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from export.world.render import IMAGE_SIZE

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKPOINTS_DIR = PACKAGE_DIR / "checkpoints"
REPO_ROOT = PACKAGE_DIR.parent.parent
WORK_DIR = REPO_ROOT / "artifacts" / "world" / "work"
PROMPTS_DIR = REPO_ROOT / "benchmarks" / "prompts"
HELDOUT_FILE = PROMPTS_DIR / "shapes_heldout.txt"
CALIBRATION_FILE = PROMPTS_DIR / "shapes_calibration.txt"

# How often each family is drawn for training: relations dominate the prompt list (1520 of 1700),
# so drawing uniformly over prompts would starve the single-object and count families.
FAMILY_WEIGHTS = {"object": 0.10, "size": 0.15, "position": 0.20, "count": 0.20, "relation": 0.35}


@dataclass(frozen=True)
class VaeConfig:
    channels: tuple[int, ...] = (16, 32, 64, 64)  # four levels: 8x downsampling, as SD's VAE
    latent_channels: int = 4
    norm_groups: int = 16
    steps: int = 1000
    batch: int = 24
    lr: float = 1e-3
    kl_weight: float = 1e-6  # SD's VAE used 1e-6


@dataclass(frozen=True)
class TextConfig:
    hidden: int = 64
    layers: int = 2
    heads: int = 4


@dataclass(frozen=True)
class UNetConfig:
    channels: tuple[int, ...] = (48, 96, 96)
    heads: int = 4
    layers_per_block: int = 1
    norm_groups: int = 16


@dataclass(frozen=True)
class TeacherConfig:
    images: int = 30_000  # rendered and encoded once, then reused every epoch
    steps: int = 2400  # the committed teacher: stopped at 2400 of a 2800-step cosine schedule (see README)
    batch: int = 64
    lr: float = 6e-4
    text_lr: float = 3e-4
    snr_gamma: float = 5.0  # min-SNR loss weighting (Hang et al. 2023)
    caption_dropout: float = 0.1  # empty prompt, so classifier-free guidance has an unconditional model
    ema_decay: float = 0.999


@dataclass(frozen=True)
class StudentConfig:
    steps: int = 200  # the committed student: stopped at 200 of a 300-step cosine schedule (see README)
    batch: int = 32
    lr: float = 2e-4
    ddim_steps: int = 50  # LCM's skipping-step solver: k = 1000 / 50 = 20 timesteps per jump
    w_min: float = 1.0  # LCM's w (the served guidance_scale is w + 1)
    w_max: float = 6.0
    ema_decay: float = 0.95  # the target network's rate (the paper's supplement and LCM use 0.95)
    time_cond_proj_dim: int = 256  # LCM's published guidance-embedding width
    huber_c: float = 0.001


@dataclass(frozen=True)
class RewardConfig:
    image_size: int = IMAGE_SIZE
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 3
    text_hidden: int = 64
    text_layers: int = 2
    heads: int = 4
    prompts: int = 600  # training prompts sampled by student and teacher for preference pairs
    render_prompts: int = 200  # prompts rendered right and wrong (held-out accuracy; training draws fresh renders)
    renders_per_prompt: int = 2  # wrong-attribute renders beside each right one
    render_share: float = 0.5  # of each batch: pairs of fresh renders, the rest generated pairs
    steps: int = 2000
    batch: int = 32
    lr: float = 3e-4


@dataclass(frozen=True)
class ServingConfig:
    """The deployment defaults the preset is exported with."""

    student_steps: int = 2
    teacher_steps: int = 20
    guidance_scale: float = 4.0
    sigma: float = 0.6


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    image_size: int = IMAGE_SIZE
    vae: VaeConfig = field(default_factory=VaeConfig)
    text: TextConfig = field(default_factory=TextConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    checkpoint_every: int = 200  # steps between resumable snapshots

    @classmethod
    def smoke(cls) -> "WorldConfig":
        """Every stage for a handful of steps on tiny models: proves the code runs, not that it learns."""
        return cls(
            vae=replace(VaeConfig(), steps=2, batch=4, channels=(16, 16, 16, 16)),
            text=TextConfig(hidden=32, layers=1, heads=2),
            unet=UNetConfig(channels=(32, 32, 32), heads=2, norm_groups=16),
            teacher=replace(TeacherConfig(), images=16, steps=2, batch=4),
            student=replace(StudentConfig(), steps=2, batch=4),
            reward=replace(RewardConfig(), vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1, prompts=4, render_prompts=6, steps=2, batch=4),
            serving=replace(ServingConfig(), teacher_steps=2),
            checkpoint_every=1,
        )
