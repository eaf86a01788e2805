"""The original ``ImageReward.pt`` layout: every key and shape, the renames to transformers' BLIP
classes, and the fold of the activation-free MLP head into one Linear.

The layout is written from BLIP's ``VisionTransformer`` (timm-style blocks, fused qkv), ``med.py``'s
BertModel and ImageReward's MLP, so a checkpoint is checked key by key before any weight is loaded.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from export.models.image_reward_config import ImageRewardConfig

# ImageReward's MLP: Linear(H, 1024), Dropout, Linear(1024, 128), Dropout, Linear(128, 64), Dropout,
# Linear(64, 16), Linear(16, 1); the Linears sit at these nn.Sequential indices.
MLP_WIDTHS = (1024, 128, 64, 16, 1)
MLP_LINEAR_INDICES = (0, 2, 4, 6, 7)

# BLIP's width of the contrastive projections it keeps in the checkpoint (unused by the reward).
BLIP_EMBED_DIM = 256

# Keys the original checkpoint carries that the reward never reads; accepted and dropped when present.
# - text_encoder position_ids: med.py registers it as a persistent buffer (an arange, not a weight).
# - vision_proj / text_proj: BLIP_Pretrain's ITC projections; ImageReward.score never calls them.
IGNORED_ORIGINAL_KEYS = (
    "blip.text_encoder.embeddings.position_ids",
    "blip.vision_proj.weight",
    "blip.vision_proj.bias",
    "blip.text_proj.weight",
    "blip.text_proj.bias",
)

_VISION_PREFIX = "blip.visual_encoder."
_TEXT_PREFIX = "blip.text_encoder."
MLP_PREFIX = "mlp.layers."

# BLIP VisionTransformer -> transformers BlipVisionModel, the renames of transformers'
# convert_blip_original_pytorch_to_hf.py (qkv stays fused: BlipAttention has one qkv Linear).
_VISION_RENAMES = (
    (r"cls_token", r"embeddings.class_embedding"),
    (r"pos_embed", r"embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"post_layernorm.\1"),
)


class CheckpointError(ValueError):
    """An ImageReward checkpoint whose keys, shapes or dtypes do not match the expected architecture."""


# ---------------------------------------------------------------------------------------------
# The original checkpoint layout
# ---------------------------------------------------------------------------------------------


def original_parameter_shapes(config: ImageRewardConfig) -> dict[str, tuple[int, ...]]:
    """Every weight ImageReward's forward reads, by original key, in the original module order.

    Written from BLIP's ``VisionTransformer`` (timm-style blocks, fused qkv), ``med.py``'s BertModel
    (no token-type embeddings, no pooler, a crossattention block in every layer) and ImageReward's MLP.
    """
    v, t = config.vision, config.text
    D, M, H, E, I = v.hidden_size, v.mlp_size, t.hidden_size, t.encoder_width, t.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(prefix: str, out_f: int, in_f: int) -> None:
        shapes[prefix + ".weight"] = (out_f, in_f)
        shapes[prefix + ".bias"] = (out_f,)

    def norm(prefix: str, width: int) -> None:
        shapes[prefix + ".weight"] = (width,)
        shapes[prefix + ".bias"] = (width,)

    ve = _VISION_PREFIX
    shapes[ve + "cls_token"] = (1, 1, D)
    shapes[ve + "pos_embed"] = (1, v.num_patches + 1, D)
    shapes[ve + "patch_embed.proj.weight"] = (D, 3, v.patch_size, v.patch_size)
    shapes[ve + "patch_embed.proj.bias"] = (D,)
    for i in range(v.num_layers):
        b = f"{ve}blocks.{i}"
        norm(f"{b}.norm1", D)
        linear(f"{b}.attn.qkv", 3 * D, D)
        linear(f"{b}.attn.proj", D, D)
        norm(f"{b}.norm2", D)
        linear(f"{b}.mlp.fc1", M, D)
        linear(f"{b}.mlp.fc2", D, M)
    norm(ve + "norm", D)

    te = _TEXT_PREFIX
    shapes[te + "embeddings.word_embeddings.weight"] = (t.vocab_size, H)
    shapes[te + "embeddings.position_embeddings.weight"] = (t.max_position_embeddings, H)
    norm(te + "embeddings.LayerNorm", H)
    for j in range(t.num_layers):
        layer = f"{te}encoder.layer.{j}"
        for block, kv_width in (("attention", H), ("crossattention", E)):
            linear(f"{layer}.{block}.self.query", H, H)
            linear(f"{layer}.{block}.self.key", H, kv_width)
            linear(f"{layer}.{block}.self.value", H, kv_width)
            linear(f"{layer}.{block}.output.dense", H, H)
            norm(f"{layer}.{block}.output.LayerNorm", H)
        linear(f"{layer}.intermediate.dense", I, H)
        linear(f"{layer}.output.dense", H, I)
        norm(f"{layer}.output.LayerNorm", H)

    widths = (H,) + MLP_WIDTHS
    for k, idx in enumerate(MLP_LINEAR_INDICES):
        linear(f"{MLP_PREFIX}{idx}", widths[k + 1], widths[k])
    return shapes


def rename_original_key(key: str) -> str:
    """Original ``blip.*`` key -> this module's transformers key (``vision.*`` / ``text.*``)."""
    if key.startswith(_VISION_PREFIX):
        rest = key[len(_VISION_PREFIX) :]
        for pattern, repl in _VISION_RENAMES:
            if re.fullmatch(pattern, rest):
                return "vision." + re.sub(pattern, repl, rest)
        raise CheckpointError(f"no transformers name for vision key {key!r}")
    if key.startswith(_TEXT_PREFIX):
        # BlipTextModel kept med.py's module names (embeddings.LayerNorm, encoder.layer.N.crossattention...).
        return "text." + key[len(_TEXT_PREFIX) :]
    raise CheckpointError(f"{key!r} is neither a blip.visual_encoder nor a blip.text_encoder key")


# ---------------------------------------------------------------------------------------------
# MLP folding
# ---------------------------------------------------------------------------------------------


def _mlp_linears(mlp_state: Mapping[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(mlp_state[f"{MLP_PREFIX}{i}.weight"], mlp_state[f"{MLP_PREFIX}{i}.bias"]) for i in MLP_LINEAR_INDICES]


def fold_mlp_head(mlp_state: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [1, H], bias [1]) of the single Linear equal to ImageReward's activation-free MLP.

    ``mlp_state`` holds the ``mlp.layers.{0,2,4,6,7}.{weight,bias}`` tensors. W = W7 W6 W4 W2 W0 and
    b follows by pushing each bias through the later layers; the products run in float64 so the
    folded head is as close to the float32 chain as float32 storage allows.
    """
    linears = _mlp_linears(mlp_state)
    weight, bias = (t.double() for t in linears[0])
    for w, b in linears[1:]:
        weight = w.double() @ weight
        bias = w.double() @ bias + b.double()
    return weight.float(), bias.float()


def mlp_folding_error(
    mlp_state: Mapping[str, torch.Tensor], weight: torch.Tensor, bias: torch.Tensor, *, rows: int = 256, seed: int = 0
) -> float:
    """Max |folded(x) - unfolded(x)| over standard-normal x, both evaluated in float32."""
    linears = _mlp_linears(mlp_state)
    x = torch.randn(rows, weight.shape[1], generator=torch.Generator().manual_seed(seed))
    unfolded = x
    for w, b in linears:
        unfolded = F.linear(unfolded, w.float(), b.float())
    return float((F.linear(x, weight, bias) - unfolded).abs().max())


def _format_keys(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def validate_original_state_dict(state_dict: Mapping[str, Any], config: ImageRewardConfig, *, source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming every missing, unexpected, mis-shaped or non-float key."""
    expected = original_parameter_shapes(config)
    keys = set(state_dict)
    missing = [k for k in expected if k not in keys]
    unexpected = sorted(keys - set(expected) - set(IGNORED_ORIGINAL_KEYS))
    bad_shape, bad_type = [], []
    for key, shape in expected.items():
        value = state_dict.get(key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or not torch.is_floating_point(value):
            bad_type.append(f"{key} ({type(value).__name__}{'' if not isinstance(value, torch.Tensor) else ' ' + str(value.dtype)})")
        elif tuple(value.shape) != shape:
            bad_shape.append(f"{key}: expected {list(shape)}, found {list(value.shape)}")
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_format_keys(unexpected)}")
    if bad_shape:
        problems.append(f"wrong shape for {len(bad_shape)} key(s): {_format_keys(bad_shape)}")
    if bad_type:
        problems.append(f"not a floating-point tensor: {_format_keys(bad_type)}")
    if problems:
        raise CheckpointError(f"{source} does not match the ImageReward architecture of its config: " + "; ".join(problems))

