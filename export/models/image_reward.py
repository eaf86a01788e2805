"""ImageReward-v1.0 (THUDM) on transformers' BLIP classes, loaded from the original ``ImageReward.pt``.

The original model (``ImageReward/ImageReward.py``) is BLIP_Pretrain's ViT-L/16 image encoder, BLIP's
``med.py`` BERT text encoder cross-attending to the image tokens, and a five-Linear MLP on the text
encoder's first token. Here the two encoders are transformers' ``BlipVisionModel`` and ``BlipTextModel``
and the MLP is folded into one ``Linear(768, 1)``: its ReLUs are commented out in the original, so the
head is affine and folds exactly (up to float rounding; the loader measures it).

Text input. The original ``score``/``inference_rank`` call the BLIP tokenizer with
``padding='max_length', truncation=True, max_length=35`` and feed ``input_ids`` and ``attention_mask``
to the text encoder unchanged. Unlike BLIP's own ITM head it does NOT overwrite ``input_ids[:, 0]``
with ``[ENC]``: position 0 stays ``[CLS]`` (101), and that is what the MLP was trained on (the training
code's ``encode_data`` does the same). So there is no token substitution anywhere, neither in
:func:`tokenize_for_reward` nor in ``forward``. The image attention mask (``image_atts``) is all ones.

Image input. The original preprocesses a PIL image: ``Resize(224, BICUBIC)``, ``CenterCrop(224)``,
``ToTensor``, CLIP mean/std. ``forward`` does the tensor equivalent in the graph for a square image in
[0, 1] (a VAE decode): bicubic resize to 224 with ``antialias=False`` (the antialiased kernel has no
ONNX opset-17 / TensorRT export; it only differs when downscaling, e.g. from 512, not for the tiny
preset's 128 -> 224 upscale), clamp to [0, 1] (PIL clips its uint8 result after the resize), normalise.
Two known, small deviations from the original remain: PIL's bicubic kernel uses a = -0.5 where torch
uses a = -0.75, and the original sees the image quantised to uint8.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

# The server tokenizes with the same code; re-exported here for checkpoint tooling and tests.
from bll_python.text import REWARD_MAX_LENGTH, reward_tokenizer, tokenize_for_reward  # noqa: F401

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "ImageReward.pt"
CONFIG_NAME = "ImageReward.config.json"

# The published reward normalisation (ImageReward.__init__: self.mean, self.std).
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Additive attention-mask value for masked positions. transformers' ``invert_attention_mask`` (used
# for the cross-attention mask) multiplies by float32's min (-3.4e38): an FP16 TensorRT engine turns
# that constant into -inf and ``0 * -inf`` into NaN even for the all-ones image mask. -1e4 fits in
# FP16, still zeroes a masked logit after softmax, and is exactly what the original med.py uses.
MASK_VALUE = -1.0e4

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
_MLP_PREFIX = "mlp.layers."

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
# Config
# ---------------------------------------------------------------------------------------------


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
        linear(f"{_MLP_PREFIX}{idx}", widths[k + 1], widths[k])
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
    return [(mlp_state[f"{_MLP_PREFIX}{i}.weight"], mlp_state[f"{_MLP_PREFIX}{i}.bias"]) for i in MLP_LINEAR_INDICES]


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


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dim() == 2:
        mask = mask[:, None, None, :]
    elif mask.dim() == 3:
        mask = mask[:, None, :, :]
    else:
        raise ValueError(f"attention mask must be 2-D or 3-D, got shape {tuple(mask.shape)}")
    return (1.0 - mask.to(dtype)) * MASK_VALUE


class _RewardTextModel(BlipTextModel):
    """BlipTextModel whose self- and cross-attention masks both use :data:`MASK_VALUE`.

    Overriding both hooks pins the constant in the exported graph; the inherited
    ``invert_attention_mask`` (the image mask path) would bake in float32's min.
    """

    def get_extended_attention_mask(  # type: ignore[override]
        self,
        attention_mask: torch.Tensor,
        input_shape: tuple[int, ...],
        device: torch.device | None = None,
        is_decoder: bool = False,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        if is_decoder:
            raise ValueError("ImageReward's text encoder is bidirectional; the causal (decoder) mask is not used")
        return _additive_mask(attention_mask, dtype or self.dtype)

    def invert_attention_mask(self, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
        return _additive_mask(encoder_attention_mask, self.dtype)


def _vision_config(v: VisionDims) -> BlipVisionConfig:
    return BlipVisionConfig(
        hidden_size=v.hidden_size,
        intermediate_size=v.mlp_size,
        num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
        hidden_act="gelu",  # BLIP's ViT uses nn.GELU (erf)
        layer_norm_eps=v.layer_norm_eps,  # 1e-6 in BLIP; transformers' default is 1e-5
        attention_dropout=0.0,
    )


def _text_config(t: TextDims) -> BlipTextConfig:
    return BlipTextConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        encoder_hidden_size=t.encoder_width,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        max_position_embeddings=t.max_position_embeddings,
        hidden_act="gelu",
        layer_norm_eps=t.layer_norm_eps,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        # BlipTextLayer only builds its crossattention block for is_decoder configs; the forward
        # call below still passes is_decoder=False, so attention stays bidirectional.
        is_decoder=True,
        use_cache=False,
    )


class ImageRewardScorer(nn.Module):
    """``forward(image, reward_input_ids, reward_attention_mask) -> score`` in ``image_reward_spec`` order.

    image: float32 [B, 3, S, S] in [0, 1]; ids / mask: int32 [B, 35] from :func:`tokenize_for_reward`;
    score: float32 [B], the normalised ImageReward.
    """

    def __init__(self, config: ImageRewardConfig | None = None) -> None:
        super().__init__()
        self.config = config or ImageRewardConfig.published()
        self.vision = BlipVisionModel(_vision_config(self.config.vision))
        self.text = _RewardTextModel(_text_config(self.config.text), add_pooling_layer=False)
        self.head = nn.Linear(self.config.text.hidden_size, 1)
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.load_report: LoadReport | None = None
        self.eval()

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [0, 1] -> the ViT's normalised [B, 3, 224, 224]."""
        size = self.config.vision.image_size
        # Skipped while tracing: the spatial dims are static in the spec, and comparing traced
        # shapes would only bake constants into the graph and raise TracerWarnings.
        if not torch.jit.is_tracing() and (image.dim() != 4 or image.shape[1] != 3 or image.shape[2] != image.shape[3]):
            raise ValueError(f"expected a square RGB batch [B, 3, S, S], got {tuple(image.shape)}")
        # Unconditional: at S == size the half-pixel bicubic weights are exactly (0, 1, 0, 0), so it
        # is the identity there and no shape-dependent branch ends up in the graph.
        image = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
        image = image.clamp(0.0, 1.0)
        return (image - self.pixel_mean) / self.pixel_std

    def text_features(
        self, image: torch.Tensor, reward_input_ids: torch.Tensor, reward_attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The text encoder's first-token state [B, H] after cross-attending to the image (the MLP's input)."""
        image_embeds = self.vision(pixel_values=self.preprocess(image)).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text(
            input_ids=reward_input_ids.long(),
            attention_mask=reward_attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            return_dict=True,
        )
        return out.last_hidden_state[:, 0, :]

    def forward(self, image: torch.Tensor, reward_input_ids: torch.Tensor, reward_attention_mask: torch.Tensor) -> torch.Tensor:
        reward = self.head(self.text_features(image, reward_input_ids, reward_attention_mask)).squeeze(-1)
        return (reward - SCORE_MEAN) / SCORE_STD


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadReport:
    consumed_keys: tuple[str, ...]  # original keys whose values are now in the scorer
    ignored_keys: tuple[str, ...]  # members of IGNORED_ORIGINAL_KEYS found in the checkpoint
    folding_error: float  # max |folded head - original MLP| on random inputs


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


def load_original_state_dict(scorer: ImageRewardScorer, state_dict: Mapping[str, Any], *, source: str = "checkpoint") -> LoadReport:
    """Validate an original-layout state dict against ``scorer.config`` and load it into ``scorer``."""
    validate_original_state_dict(state_dict, scorer.config, source=source)
    expected = original_parameter_shapes(scorer.config)
    mlp_state = {k: state_dict[k] for k in expected if k.startswith(_MLP_PREFIX)}
    converted = {rename_original_key(k): state_dict[k] for k in expected if not k.startswith(_MLP_PREFIX)}
    weight, bias = fold_mlp_head(mlp_state)
    converted["head.weight"], converted["head.bias"] = weight, bias

    # The checks above are against our own enumeration of the original layout; strict loading
    # checks the renamed keys against what transformers actually built.
    target = scorer.state_dict()
    unfilled = sorted(set(target) - set(converted))
    extra = sorted(set(converted) - set(target))
    if unfilled or extra:
        raise CheckpointError(f"key mapping does not cover the transformers model: unfilled {unfilled}, no target for {extra}")
    with torch.no_grad():
        scorer.load_state_dict(converted, strict=True)

    report = LoadReport(
        consumed_keys=tuple(expected),
        ignored_keys=tuple(k for k in IGNORED_ORIGINAL_KEYS if k in state_dict),
        folding_error=mlp_folding_error(mlp_state, weight, bias),
    )
    scorer.load_report = report
    return report


def load_image_reward(checkpoint: Path, config: Path | ImageRewardConfig | None = None) -> ImageRewardScorer:
    """Read an original ``ImageReward.pt`` (flat state dict) into an eval-mode :class:`ImageRewardScorer`.

    ``config`` defaults to the published ImageReward-v1.0 dims (the release has no config of ours);
    tiny checkpoints pass the ``ImageReward.config.json`` written next to them. The folding error of
    the MLP head is logged and kept in ``scorer.load_report``.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"ImageReward checkpoint not found: {checkpoint}")
    if config is None:
        cfg = ImageRewardConfig.published()
    elif isinstance(config, ImageRewardConfig):
        cfg = config
    else:
        cfg = ImageRewardConfig.from_json(Path(config))

    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping) or not all(isinstance(k, str) for k in state_dict):
        raise CheckpointError(f"{checkpoint}: expected a flat state dict of named tensors, got {type(state_dict).__name__}")

    try:
        # Before building the model: a wrong config should not first allocate a ViT-L.
        validate_original_state_dict(state_dict, cfg, source=str(checkpoint))
    except CheckpointError as err:
        sibling = checkpoint.with_name(CONFIG_NAME)
        if config is None and sibling.is_file():
            raise CheckpointError(f"{err} (checked against the published config; a config exists at {sibling}: pass config={sibling})") from None
        raise
    scorer = ImageRewardScorer(cfg)
    report = load_original_state_dict(scorer, state_dict, source=str(checkpoint))
    logger.info(
        "ImageReward loaded from %s: %d keys, ignored %s, MLP folding error %.3g",
        checkpoint,
        len(report.consumed_keys),
        list(report.ignored_keys),
        report.folding_error,
    )
    return scorer


# ---------------------------------------------------------------------------------------------
# Tiny checkpoints
# ---------------------------------------------------------------------------------------------


def write_tiny_image_reward(directory: Path, seed: int = 0, config: ImageRewardConfig = TINY_CONFIG) -> Path:
    """Write a random ``ImageReward.pt`` in the original key layout plus its ``ImageReward.config.json``.

    The MLP keeps the real widths (H -> 1024 -> 128 -> 64 -> 16 -> 1) with H the tiny text width.
    Weights are scaled so every part of the network moves the score (LayerNorm affines away from
    1/0, Linear weights ~ 1/sqrt(fan_in)); the original's MLP init (std 1/(H+1), zero bias) would
    make the score near-constant and hide mapping errors.
    The checkpoint also carries the keys the real one has and the reward ignores.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    state: dict[str, torch.Tensor] = {}
    for key, shape in original_parameter_shapes(config).items():
        if len(shape) == 1:  # biases and LayerNorm affines
            state[key] = (1.0 if key.endswith(".weight") else 0.0) + 0.1 * randn(*shape)
        elif key.endswith(("cls_token", "pos_embed", "embeddings.weight")):  # embedding tables
            state[key] = 0.5 * randn(*shape)
        else:  # Linear / patch-conv weights
            # The MLP's 0.7 per layer keeps the score's spread ~0.2 on LayerNorm'd features, where
            # float32 rounding of the unfolded head stays well under the 1e-6 folding budget.
            gain = 0.7 if key.startswith(_MLP_PREFIX) else 1.0
            state[key] = gain * randn(*shape) / math.sqrt(math.prod(shape[1:]))
    t, v = config.text, config.vision
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(t.max_position_embeddings).expand(1, -1).clone()
    state["blip.vision_proj.weight"] = randn(BLIP_EMBED_DIM, v.hidden_size) / math.sqrt(v.hidden_size)
    state["blip.vision_proj.bias"] = torch.zeros(BLIP_EMBED_DIM)
    state["blip.text_proj.weight"] = randn(BLIP_EMBED_DIM, t.hidden_size) / math.sqrt(t.hidden_size)
    state["blip.text_proj.bias"] = torch.zeros(BLIP_EMBED_DIM)

    path = directory / CHECKPOINT_NAME
    torch.save(state, path)
    config.to_json(directory / CONFIG_NAME)
    return path


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
