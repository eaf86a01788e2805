"""A from-scratch re-statement of the ORIGINAL ImageReward-v1.0 architecture, for tests only.

Module names and forward math follow the original code, not transformers: BLIP's timm-style
``VisionTransformer`` (``models/vit.py``: fused qkv, LayerNorm eps 1e-6, nn.GELU), BLIP's
``models/med.py`` BertModel (word + position embeddings only, cross-attention in every layer,
-10000 additive mask, no pooler), ``BLIP_Pretrain``'s unused ITC projections and ImageReward's
activation-free MLP. Its ``state_dict()`` therefore has the original checkpoint's key names; it
shares no code with ``export.image_reward`` so that loading through the key mapping is checked
against an independent computation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# ImageReward.__init__ and _transform, re-typed from the original source.
REFERENCE_MEAN = 0.16717362830052426
REFERENCE_STD = 1.0333394966054072
REFERENCE_PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
REFERENCE_PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------- BLIP ViT (vit.py)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, int(embed_dim * mlp_ratio)) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed[:, : x.size(1), :]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# ----------------------------------------------------------------------------- med.py BERT


class BertEmbeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, max_pos: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_pos, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)
        # Persistent, as in med.py: this is why the checkpoint has a position_ids entry.
        self.register_buffer("position_ids", torch.arange(max_pos).expand((1, -1)))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = self.position_ids[:, : input_ids.shape[1]]
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(pos))


class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_size = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        source = hidden_states if kv is None else kv
        q, k, v = self._split(self.query(hidden_states)), self._split(self.key(source)), self._split(self.value(source))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size) + mask
        ctx = torch.matmul(nn.Softmax(dim=-1)(scores), v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.shape[0], ctx.shape[1], -1)


class BertSelfOutput(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden, heads, kv_width)
        self.output = BertSelfOutput(hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        return self.output(self.self(x, mask, kv), x)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.dense = nn.Linear(inter, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, inter: int, encoder_width: int) -> None:
        super().__init__()
        self.attention = BertAttention(hidden, heads, hidden)
        self.crossattention = BertAttention(hidden, heads, encoder_width)
        self.intermediate = BertIntermediate(hidden, inter)
        self.output = BertOutput(hidden, inter)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        x = self.crossattention(x, image_mask, image)  # mode='multimodal'
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, layers: int, **kw: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(**kw) for _ in range(layers)])


class BertModel(nn.Module):
    """med.py BertModel(add_pooling_layer=False), encoder (not decoder) mode."""

    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, inter: int, max_pos: int, encoder_width: int) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(vocab, hidden, max_pos)
        self.encoder = BertEncoder(layers, hidden=hidden, heads=heads, inter=inter, encoder_width=encoder_width)

    def forward(self, input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask) -> torch.Tensor:
        mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        image_mask = (1.0 - encoder_attention_mask[:, None, None, :].float()) * -10000.0
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask, encoder_hidden_states, image_mask)
        return x


# ----------------------------------------------------------------------------- ImageReward


class BLIPPretrain(nn.Module):
    def __init__(self, *, image_size: int, patch_size: int, vision_width: int, vision_depth: int, vision_heads: int, vision_mlp: int, **text: int) -> None:
        super().__init__()
        self.visual_encoder = VisionTransformer(
            image_size, patch_size, vision_width, vision_depth, vision_heads, mlp_ratio=vision_mlp / vision_width
        )
        self.text_encoder = BertModel(encoder_width=vision_width, **text)
        self.vision_proj = nn.Linear(vision_width, 256)
        self.text_proj = nn.Linear(text["hidden"], 256)


class MLP(nn.Module):
    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ReferenceImageReward(nn.Module):
    def __init__(self, config: dict) -> None:
        """``config``: the ``{"vision": ..., "text": ...}`` dims of an ``ImageReward.config.json``."""
        super().__init__()
        v, t = config["vision"], config["text"]
        assert t["encoder_width"] == v["hidden_size"]
        self.blip = BLIPPretrain(
            image_size=v["image_size"],
            patch_size=v["patch_size"],
            vision_width=v["hidden_size"],
            vision_depth=v["num_layers"],
            vision_heads=v["num_heads"],
            vision_mlp=v["mlp_size"],
            vocab=t["vocab_size"],
            hidden=t["hidden_size"],
            layers=t["num_layers"],
            heads=t["num_heads"],
            inter=t["intermediate_size"],
            max_pos=t["max_position_embeddings"],
        )
        self.mlp = MLP(t["hidden_size"])
        self.eval()

    def features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``pixel_values``: already resized to 224 and CLIP-normalised, as ``self.preprocess`` leaves them."""
        image_embeds = self.blip.visual_encoder(pixel_values)
        image_atts = torch.ones(image_embeds.size()[:-1], dtype=torch.long)
        out = self.blip.text_encoder(input_ids, attention_mask, image_embeds, image_atts)
        return out[:, 0, :].float()

    def score(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        rewards = self.mlp(self.features(pixel_values, input_ids, attention_mask))
        return ((rewards - REFERENCE_MEAN) / REFERENCE_STD).squeeze(-1)


def normalize_like_original(image_224: torch.Tensor) -> torch.Tensor:
    """ToTensor + Normalize of the original _transform, for an image already at 224 x 224."""
    mean = torch.tensor(REFERENCE_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(REFERENCE_PIXEL_STD).view(1, 3, 1, 1)
    return (image_224 - mean) / std


def upstream_pixels(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """The original's ``preprocess`` input for [B, 3, H, W] float images in [0, 1], through PIL.

    As the original is used on a diffusers output: ``numpy_to_pil`` (round to uint8), then
    ``_transform``: torchvision ``Resize(size, BICUBIC)`` on a PIL image (shorter side to ``size``,
    longer side floored; PIL's own ``Image.resize``), ``CenterCrop(size)``, ``ToTensor``, ``Normalize``.
    """
    import numpy as np
    from PIL import Image

    out = []
    for image in images:
        pil = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8))
        w, h = pil.size
        new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        pil = pil.resize((new_w, new_h), Image.BICUBIC)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        pil = pil.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(pil).astype(np.float32) / 255).permute(2, 0, 1))
    return normalize_like_original(torch.stack(out))
