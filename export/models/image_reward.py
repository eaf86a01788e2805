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
``ToTensor``, CLIP mean/std; on a PIL image torchvision's resize is PIL's, whose bicubic filter is
antialiased (widened by the downscaling factor). ``forward`` takes the image as a [0, 1] tensor (a VAE
decode) and does the same in the graph with ops that export to ONNX and TensorRT:
:mod:`export.models.resample` applies PIL's filter weights as two constant matrices (the crop folded
in) and rounds to uint8 levels where upstream holds uint8 images, then normalises. Against PIL at
512 and 1024 px the normalised pixels agree to one uint8 level, almost everywhere exactly (tests).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from export.models.image_reward_config import CONFIG_NAME, ImageRewardConfig, TextDims, VisionDims
from export.models.image_reward_keys import (
    IGNORED_ORIGINAL_KEYS,
    MLP_PREFIX,
    CheckpointError,
    fold_mlp_head,
    mlp_folding_error,
    original_parameter_shapes,
    rename_original_key,
    validate_original_state_dict,
)
from export.models.resample import resize_center_crop

logger = logging.getLogger(__name__)

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
        """[B, 3, H, W] in [0, 1] -> the ViT's normalised [B, 3, 224, 224], as upstream's PIL transform makes it."""
        # Skipped while tracing: the spatial dims are static in the spec, and comparing traced
        # shapes would only bake constants into the graph and raise TracerWarnings.
        if not torch.jit.is_tracing() and (image.dim() != 4 or image.shape[1] != 3):
            raise ValueError(f"expected an RGB batch [B, 3, H, W], got {tuple(image.shape)}")
        # Unconditional: at H == W == 224 the matrices are the identity, so no shape-dependent
        # branch ends up in the graph.
        image = resize_center_crop(image, self.config.vision.image_size)
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


def load_original_state_dict(scorer: ImageRewardScorer, state_dict: Mapping[str, Any], *, source: str = "checkpoint") -> LoadReport:
    """Validate an original-layout state dict against ``scorer.config`` and load it into ``scorer``."""
    validate_original_state_dict(state_dict, scorer.config, source=source)
    expected = original_parameter_shapes(scorer.config)
    mlp_state = {k: state_dict[k] for k in expected if k.startswith(MLP_PREFIX)}
    converted = {rename_original_key(k): state_dict[k] for k in expected if not k.startswith(MLP_PREFIX)}
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

