"""ImageReward's dimensions: the published ImageReward-v1.0, the tiny preset's, and their JSON file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from bll_python.text import REWARD_MAX_LENGTH

CHECKPOINT_NAME = "ImageReward.pt"
CONFIG_NAME = "ImageReward.config.json"


@dataclass(frozen=True)
class VisionDims:
    """BLIP's ViT; defaults are ``create_vit('large', 224)``."""

    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    mlp_size: int = 4096
    layer_norm_eps: float = 1e-6

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextDims:
    """med.py's BERT; defaults are ImageReward's med_config.json (bert-base plus [DEC]/[ENC])."""

    vocab_size: int = 30524
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    encoder_width: int = 1024
    layer_norm_eps: float = 1e-12


@dataclass(frozen=True)
class ImageRewardConfig:
    vision: VisionDims = field(default_factory=VisionDims)
    text: TextDims = field(default_factory=TextDims)

    def __post_init__(self) -> None:
        v, t = self.vision, self.text
        problems = []
        if v.image_size % v.patch_size:
            problems.append(f"vision.image_size {v.image_size} is not a multiple of vision.patch_size {v.patch_size}")
        if v.hidden_size % v.num_heads:
            problems.append(f"vision.hidden_size {v.hidden_size} is not a multiple of vision.num_heads {v.num_heads}")
        if t.hidden_size % t.num_heads:
            problems.append(f"text.hidden_size {t.hidden_size} is not a multiple of text.num_heads {t.num_heads}")
        # BLIP_Pretrain overwrites med_config's encoder_width with the ViT width.
        if t.encoder_width != v.hidden_size:
            problems.append(f"text.encoder_width {t.encoder_width} != vision.hidden_size {v.hidden_size}")
        if t.max_position_embeddings < REWARD_MAX_LENGTH:
            problems.append(f"text.max_position_embeddings {t.max_position_embeddings} < {REWARD_MAX_LENGTH} tokens")
        if problems:
            raise ValueError("invalid ImageReward config: " + "; ".join(problems))

    @classmethod
    def published(cls) -> "ImageRewardConfig":
        """ImageReward-v1.0 as released (ViT-L/16 at 224, bert-base with cross-attention)."""
        return cls()

    def to_json(self, path: Path) -> Path:
        path.write_text(json.dumps({"vision": asdict(self.vision), "text": asdict(self.text)}, indent=2) + "\n")
        return path

    @classmethod
    def from_json(cls, path: Path) -> "ImageRewardConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ImageReward config not found: {path}")
        raw = json.loads(path.read_text())
        return cls(vision=_dims_from(VisionDims, raw, "vision", path), text=_dims_from(TextDims, raw, "text", path))


def _dims_from(kind: type, raw: Mapping[str, Any], section: str, path: Path) -> Any:
    # Every field must be spelled out: a silently defaulted dim would be a published-model dim.
    if not isinstance(raw, Mapping) or set(raw) != {"vision", "text"}:
        raise ValueError(f"{path}: expected exactly the sections ['text', 'vision'], got {sorted(raw) if isinstance(raw, Mapping) else raw!r}")
    values = raw[section]
    names = {f.name for f in fields(kind)}
    missing, unknown = sorted(names - set(values)), sorted(set(values) - names)
    if missing or unknown:
        raise ValueError(f"{path}: section {section!r} missing {missing}, unknown {unknown}")
    return kind(**values)


TINY_CONFIG = ImageRewardConfig(
    vision=VisionDims(image_size=224, patch_size=16, hidden_size=32, num_layers=2, num_heads=4, mlp_size=128),
    text=TextDims(
        vocab_size=30524, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37, max_position_embeddings=64, encoder_width=32
    ),
)

