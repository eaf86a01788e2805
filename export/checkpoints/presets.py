"""Random-weight checkpoints with the real architectures, written in the real on-disk formats.

A preset is only a set of checkpoint folders; everything downstream (loading, export, serving)
reads them back through the same code a real SD1.5 / student / ImageReward checkpoint takes.

- ``tiny``: seconds to export; 16x16 latents, 128x128 images. The CI and ``make demo`` default.
- ``small``: the real SD1.5 block structure at reduced width (UNet 64/128/256/256, 32x32
  latents), so component compute dominates the serving overhead as it does on a GPU.
- ``shapes``: not random: the trained world's committed checkpoints (``export/world/``), with the
  serving defaults it was trained for and its own calibration prompts (``preset_plan``).
- ``tiny-xl``: the SDXL family at tiny width: SDXL's UNet layout (DownBlock2D then two
  CrossAttnDownBlock2D, linear projections, deeper transformers in the last block, ``text_time``
  added conditions), its two text towers (CLIP + CLIP with projection, the second tokenizer padding
  with ``!`` as OpenCLIP's does), its VAE scaling and ``force_upcast``; 16x16 latents, 128x128 images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from export.checkpoints.errors import SourceError
from export.checkpoints.lora import LORA_FILE
from export.checkpoints.sources import Sources
from export.checkpoints.tokenizers import write_clip_tokenizer
from export.models.image_reward_config import CHECKPOINT_NAME, CONFIG_NAME, TINY_CONFIG, ImageRewardConfig
from export.models.image_reward_keys import BLIP_EMBED_DIM, MLP_PREFIX, original_parameter_shapes

if TYPE_CHECKING:
    from bll_python.settings import GenerationSettings

# SD1.5's noise schedule; every scheduler of the teacher and the student derives from it.
SD15_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
)
VAE_SCALING_FACTOR = 0.18215
SDXL_VAE_SCALING_FACTOR = 0.13025
# SDXL base ships EulerDiscreteScheduler on the same betas, with "leading" spacing.
SDXL_SCHEDULE = {**{k: v for k, v in SD15_SCHEDULE.items() if k not in ("clip_sample", "set_alpha_to_one")}, "timestep_spacing": "leading"}


UNET_LAYERS_PER_BLOCK = 1


@dataclass(frozen=True)
class PresetConfig:
    unet_channels: tuple[int, ...]
    unet_heads: int
    latent_size: int
    text_hidden: int
    text_layers: int
    vae_channels: tuple[int, ...]


@dataclass(frozen=True)
class XLPresetConfig:
    """An SDXL-family preset: SDXL's block layout at a reduced width."""

    unet_channels: tuple[int, ...]
    unet_heads: tuple[int, ...]
    transformer_layers: tuple[int, ...]
    latent_size: int
    text_hidden: int  # CLIP ViT-L's width in SDXL (768)
    text_hidden_2: int  # OpenCLIP bigG's width (1280); also its projection (the pooled vector)
    text_layers: int
    vae_channels: tuple[int, ...]
    addition_time_embed_dim: int  # 256 in SDXL


PRESETS: dict[str, PresetConfig | XLPresetConfig] = {
    "tiny": PresetConfig(unet_channels=(32, 32, 64, 64), unet_heads=8, latent_size=16, text_hidden=32, text_layers=2, vae_channels=(32, 32, 64, 64)),
    "small": PresetConfig(unet_channels=(64, 128, 256, 256), unet_heads=8, latent_size=32, text_hidden=64, text_layers=2, vae_channels=(32, 64, 64, 64)),
    "tiny-xl": XLPresetConfig(
        unet_channels=(32, 64, 64),
        unet_heads=(2, 4, 4),
        transformer_layers=(1, 1, 2),
        latent_size=16,
        text_hidden=32,
        text_hidden_2=32,
        text_layers=2,
        vae_channels=(32, 32, 64, 64),
        addition_time_embed_dim=8,
    ),
}


def preset_family(preset: str) -> str:
    return "sdxl" if isinstance(_config(preset), XLPresetConfig) else "sd15"


def _config(preset: str) -> PresetConfig | XLPresetConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def _unet(cfg: PresetConfig | XLPresetConfig, seed: int, time_cond_proj_dim: int | None = None):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    if isinstance(cfg, XLPresetConfig):
        # stabilityai/stable-diffusion-xl-base-1.0's unet/config.json, narrowed.
        return UNet2DConditionModel(
            sample_size=cfg.latent_size,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=cfg.unet_channels,
            layers_per_block=2,
            transformer_layers_per_block=cfg.transformer_layers,
            cross_attention_dim=cfg.text_hidden + cfg.text_hidden_2,
            attention_head_dim=cfg.unet_heads,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=cfg.addition_time_embed_dim,
            projection_class_embeddings_input_dim=6 * cfg.addition_time_embed_dim + cfg.text_hidden_2,
            norm_num_groups=32,
            time_cond_proj_dim=time_cond_proj_dim,
        )
    return UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=cfg.unet_channels,
        layers_per_block=UNET_LAYERS_PER_BLOCK,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.unet_heads,
        norm_num_groups=32,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def _scale_out_init(module: torch.nn.Module, gain: float) -> None:
    # Random init leaves the UNet's output near zero and the VAE's output near grey; a little
    # gain makes the images (and so the ImageReward scores) differ visibly between seeds.
    for p in module.parameters():
        p.data.mul_(gain)


def _clip_config(hidden: int, layers: int, projection: int, act: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection,
        hidden_act=act,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def _vae(cfg: PresetConfig | XLPresetConfig, scaling_factor: float, force_upcast: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=cfg.latent_size * 2 ** (len(cfg.vae_channels) - 1),
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def _open_clip_tokenizer(directory: Path) -> Path:
    """SDXL's ``tokenizer_2``: CLIP's BPE with OpenCLIP's padding token ``!`` (id 0), not ``<|endoftext|>``."""
    import json

    write_clip_tokenizer(directory)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        config = json.loads((directory / name).read_text())
        config["pad_token"] = "!"
        (directory / name).write_text(json.dumps(config, indent=2))
    return directory


def write_teacher(directory: Path, preset: str = "tiny", seed: int = 0) -> Path:
    """An SD1.5- (or SDXL-) architecture diffusers pipeline folder (safetensors weights, real tokenizers)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    cfg = _config(preset)
    if isinstance(cfg, XLPresetConfig):
        return write_xl_teacher(directory, preset, seed)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(cfg.text_hidden, cfg.text_layers, cfg.text_hidden, "quick_gelu"))
    torch.manual_seed(seed + 1)
    vae = _vae(cfg, VAE_SCALING_FACTOR, force_upcast=True)
    unet = _unet(cfg, seed + 2)
    tokenizer_dir = write_clip_tokenizer(directory / "_tokenizer_src")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=unet,
        # SD1.5 ships a PNDM config; the serving solver is built from its schedule.
        scheduler=PNDMScheduler.from_config({**SD15_SCHEDULE, "skip_prk_steps": True}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    for f in tokenizer_dir.iterdir():
        f.unlink()
    tokenizer_dir.rmdir()
    return directory


def write_xl_teacher(directory: Path, preset: str = "tiny-xl", seed: int = 0) -> Path:
    """An SDXL-base-layout pipeline folder: two text towers and tokenizers, the text_time UNet,
    the SDXL VAE config (0.13025, ``force_upcast``), Euler, ``force_zeros_for_empty_prompt``."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    cfg = _config(preset)
    assert isinstance(cfg, XLPresetConfig)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(cfg.text_hidden, cfg.text_layers, cfg.text_hidden, "quick_gelu"))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(cfg.text_hidden_2, cfg.text_layers, cfg.text_hidden_2, "gelu"))
    torch.manual_seed(seed + 1)
    vae = _vae(cfg, SDXL_VAE_SCALING_FACTOR, force_upcast=True)
    unet = _unet(cfg, seed + 2)
    tok = write_clip_tokenizer(directory / "_tokenizer_src")
    tok2 = _open_clip_tokenizer(directory / "_tokenizer_2_src")
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(tok),
        tokenizer_2=CLIPTokenizer.from_pretrained(tok2),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULE),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    for folder in (tok, tok2):
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    return directory


def write_xl_refiner(directory: Path, teacher: Path, preset: str = "tiny-xl", seed: int = 800) -> Path:
    """An SDXL-Refiner-layout img2img folder beside a tiny-xl teacher: the teacher's second tower and
    VAE (the refiner ships the same ones), a UNet conditioned on the second tower alone with
    aesthetic-score time ids (5 values), ``requires_aesthetics_score``, no first tower."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from diffusers import UNet2DConditionModel as UNet
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    cfg = _config(preset)
    assert isinstance(cfg, XLPresetConfig)
    # The parts the refiner shares with the base, read one by one (a whole pipeline would also load,
    # and show a progress bar for, the parts the refiner does not have).
    teacher = Path(teacher)
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(teacher / "text_encoder_2")
    vae = AutoencoderKL.from_pretrained(teacher / "vae")
    tokenizer_2 = CLIPTokenizer.from_pretrained(teacher / "tokenizer_2")
    torch.manual_seed(seed)
    unet = UNet.from_config(
        {
            **dict(_unet(cfg, seed).config),
            "cross_attention_dim": cfg.text_hidden_2,
            "projection_class_embeddings_input_dim": 5 * cfg.addition_time_embed_dim + cfg.text_hidden_2,
        }
    )
    _scale_out_init(unet.conv_out, 2.0)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULE),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


def _student_schedule(preset: str) -> dict:
    return SDXL_SCHEDULE if preset_family(preset) == "sdxl" else SD15_SCHEDULE


def write_cd_student(directory: Path, preset: str = "tiny", seed: int = 100) -> Path:
    """A full distilled UNet (the paper's CD-SD1.5 layout): ``unet/`` plus its sampler config."""
    from diffusers import LCMScheduler

    unet = _unet(_config(preset), seed)
    _scale_out_init(unet.conv_out, 4.0)
    unet.save_pretrained(directory / "unet", safe_serialization=True)
    LCMScheduler.from_config(_student_schedule(preset)).save_pretrained(directory / "scheduler")
    return directory


def write_lcm_student(directory: Path, preset: str = "tiny", seed: int = 200, time_cond_proj_dim: int = 256) -> Path:
    """A latent consistency UNet with LCM's guidance embedding (LCM_Dreamshaper_v7 layout: ``unet/`` + ``scheduler/``).

    256 is the published ``time_cond_proj_dim``; the embedding of ``w`` enters through ``cond_proj``.
    """
    from diffusers import LCMScheduler

    unet = _unet(_config(preset), seed, time_cond_proj_dim=time_cond_proj_dim)
    _scale_out_init(unet.conv_out, 4.0)
    # Random init leaves cond_proj's contribution small next to the timestep's; a larger gain makes
    # a wrong guidance scale visible in the output.
    _scale_out_init(unet.time_embedding.cond_proj, 8.0)
    unet.save_pretrained(directory / "unet", safe_serialization=True)
    LCMScheduler.from_config(_student_schedule(preset)).save_pretrained(directory / "scheduler")
    return directory


def write_add_student(directory: Path, preset: str = "tiny-xl", seed: int = 600) -> Path:
    """An adversarial-diffusion-distilled full UNet in stabilityai/sdxl-turbo's layout: ``unet/`` plus
    the ``scheduler/`` it ships (EulerAncestralDiscreteScheduler, ``timestep_spacing="trailing"``)."""
    from diffusers import EulerAncestralDiscreteScheduler

    unet = _unet(_config(preset), seed)
    _scale_out_init(unet.conv_out, 4.0)
    unet.save_pretrained(directory / "unet", safe_serialization=True)
    EulerAncestralDiscreteScheduler.from_config({**_student_schedule(preset), "timestep_spacing": "trailing"}).save_pretrained(directory / "scheduler")
    return directory


# The layers LCM-LoRA / Hyper-SD / Flash adapt, trimmed to one of each kind: attention
# projections (Linear), the transformer's 1x1 proj_in (Conv2d in SD1.5) and a resnet 3x3 conv.
LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "proj_in", "resnets.0.conv1")
# The key layout each kind's published file uses, so the tiny checkpoint exercises that path.
LORA_LAYOUTS = {"lcm-lora": "kohya", "hyper-sd": "kohya", "flash": "diffusers", "lightning": "kohya"}
LORA_KEY_LAYOUTS = ("diffusers", "kohya", "kohya-ldm", "diffusers-legacy")
_LORA_SEEDS = {"lcm-lora": 300, "hyper-sd": 400, "flash": 500, "lightning": 700}


def lora_tensors(preset: str = "tiny", seed: int = 300, rank: int = 4) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random LoRA factors ``{module: (down [r, in, ...], up [out, r, ...])}`` for the preset's UNet."""
    from torch import nn

    cfg = _config(preset)
    with torch.device("meta"):  # only the module shapes are needed
        unet = _unet(cfg, 0)
    gen = torch.Generator().manual_seed(seed)
    factors = {}
    for name, module in unet.named_modules():
        if not name.endswith(LORA_TARGETS):
            continue
        if isinstance(module, nn.Linear):
            fan_in, down_shape, up_shape = module.in_features, (rank, module.in_features), (module.out_features, rank)
        else:
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            down_shape, up_shape = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
        # B @ A moves a layer's output by about half its base weight's: clearly visible, never dominant.
        down = torch.randn(down_shape, generator=gen) / fan_in**0.5
        up = 0.5 * torch.randn(up_shape, generator=gen) / rank**0.5
        factors[name] = (down, up)
    return factors


# diffusers' resnet layer names -> the original LDM ResBlock's.
_LDM_RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_LDM_MID = {("resnets", 0): "0", ("attentions", 0): "1", ("resnets", 1): "2"}


def ldm_module_name(name: str, layers_per_block: int = UNET_LAYERS_PER_BLOCK) -> str:
    """The original LDM (CompVis) name of an SD1.5-architecture diffusers UNet module in a resnet or attention.

    ``down_blocks.b.{resnets,attentions}.l`` is ``input_blocks.(1 + b * (n + 1) + l).{0,1}``, the mid block's
    three layers are ``middle_block.{0,1,2}``, ``up_blocks.b.*.l`` is ``output_blocks.(b * (n + 1) + l).{0,1}``,
    with ``n`` layers per block; a resnet's convs and time projection have their LDM names too.
    """
    parts = name.split(".")
    n = layers_per_block
    if parts[0] in ("down_blocks", "up_blocks") and parts[2] in ("resnets", "attentions"):
        block, kind, layer, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        index = 1 + block * (n + 1) + layer if parts[0] == "down_blocks" else block * (n + 1) + layer
        head = ["input_blocks" if parts[0] == "down_blocks" else "output_blocks", str(index), "0" if kind == "resnets" else "1"]
    elif parts[0] == "mid_block" and (parts[1], int(parts[2])) in _LDM_MID:
        kind, rest = parts[1], parts[3:]
        head = ["middle_block", _LDM_MID[(kind, int(parts[2]))]]
    else:
        raise ValueError(f"no LDM name for {name}: only resnet and attention layers are mapped")
    if kind == "resnets":
        rest = [_LDM_RESNET[".".join(rest)]]
    return ".".join(head + rest)


def write_lora_student(directory: Path, kind: str = "lcm-lora", layout: str | None = None, preset: str = "tiny", seed: int | None = None, rank: int = 4) -> Path:
    """A random UNet LoRA for the preset's teacher as ``pytorch_lora_weights.safetensors``; returns the file.

    ``layout="diffusers"``: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (peft, scale 1).
    ``layout="kohya"``: ``lora_unet_<module_with_underscores>.lora_down.weight`` / ``lora_up.weight``
    / ``alpha``. Alpha is rank / 2 and ``lora_up`` is doubled to compensate, so both layouts of one
    seed encode the same update and a loader that ignored alpha would be caught.
    ``layout="kohya-ldm"``: the kohya format with the original LDM module names
    (``lora_unet_input_blocks_1_1_proj_in``) that LoRAs trained on LDM/SGM code keep.
    ``layout="diffusers-legacy"``: diffusers' pre-peft keys (``unet.<block>.processor.to_q_lora.down.weight``,
    ``unet.<module>.lora.up.weight``), which older published LoRA files still use.
    """
    from safetensors.torch import save_file

    layout = layout or LORA_LAYOUTS.get(kind, "diffusers")
    if layout not in LORA_KEY_LAYOUTS:
        raise ValueError(f"unknown LoRA layout {layout!r}; choose one of {list(LORA_KEY_LAYOUTS)}")
    legacy_processor = {"attn1.to_q": "to_q_lora", "attn1.to_k": "to_k_lora", "attn1.to_v": "to_v_lora", "attn1.to_out.0": "to_out_lora"}
    legacy_processor.update({k.replace("attn1", "attn2"): v for k, v in legacy_processor.items()})
    factors = lora_tensors(preset, _LORA_SEEDS.get(kind, 300) if seed is None else seed, rank)
    state: dict[str, torch.Tensor] = {}
    alpha = rank / 2
    for name, (down, up) in factors.items():
        if layout == "diffusers":
            state[f"unet.{name}.lora_A.weight"] = down
            state[f"unet.{name}.lora_B.weight"] = up
        elif layout == "diffusers-legacy":
            proj = next((k for k in legacy_processor if name.endswith("." + k)), None)
            prefix = f"unet.{name[: -len(proj)]}{proj.split('.')[0]}.processor.{legacy_processor[proj]}" if proj else f"unet.{name}.lora"
            state[f"{prefix}.down.weight"] = down
            state[f"{prefix}.up.weight"] = up
        else:
            module = ldm_module_name(name) if layout == "kohya-ldm" else name
            key = "lora_unet_" + module.replace(".", "_")
            state[f"{key}.lora_down.weight"] = down
            state[f"{key}.lora_up.weight"] = up * (rank / alpha)
            state[f"{key}.alpha"] = torch.tensor(alpha)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LORA_FILE
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    return path


def write_student(kind: str, directory: Path, preset: str = "tiny", layout: str | None = None) -> Path:
    """A tiny checkpoint of ``kind`` in its real format; returns what ``--student`` takes."""
    if kind == "cd":
        return write_cd_student(directory, preset)
    if kind == "lcm":
        return write_lcm_student(directory, preset)
    if kind == "add":
        return write_add_student(directory, preset)
    if kind in LORA_LAYOUTS:
        return write_lora_student(directory, kind, layout, preset)
    raise ValueError(f"no tiny writer for student kind {kind!r}; choose one of {['cd', 'lcm', 'add', *LORA_LAYOUTS]}")


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
            gain = 0.7 if key.startswith(MLP_PREFIX) else 1.0
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


def write_preset(root: Path, preset: str = "tiny") -> dict[str, Path]:
    """Write teacher, student and ImageReward checkpoints under ``root``; return their paths."""
    _config(preset)
    root.mkdir(parents=True, exist_ok=True)
    reward = write_tiny_image_reward(root / "reward")
    return {
        "teacher": write_teacher(root / "teacher", preset),
        "student": write_cd_student(root / "student", preset),
        "reward": reward,
        "reward_config": reward.with_name(CONFIG_NAME),
    }


# Presets whose checkpoints are trained and committed rather than written at random, and the one
# student kind each was trained as.
TRAINED_PRESETS = {"shapes": "lcm"}


def preset_student_kind(preset: str) -> str:
    """The student kind a preset exports when none is asked for: ``cd``, or the kind a trained preset was distilled as."""
    return TRAINED_PRESETS.get(preset, "cd")


def preset_sources(preset: str, root: Path, student_kind: str | None = None, *, refiner: bool = False, refiner_max_sigma: float = 0.5) -> Sources:
    """The preset's checkpoints (written under ``root`` unless trained), the student of ``student_kind``, as export sources.

    ``refiner``: also an SDXL-Refiner-layout folder (``write_xl_refiner``; SDXL presets only), for
    rows refined with sigma <= ``refiner_max_sigma``."""
    student_kind = student_kind or preset_student_kind(preset)
    family = "sd15" if preset in TRAINED_PRESETS else preset_family(preset)
    if refiner and family != "sdxl":
        raise SourceError(f"--refiner: the {preset} preset is {family}; only an SDXL preset has a refiner")
    if preset in TRAINED_PRESETS:
        if student_kind != TRAINED_PRESETS[preset]:
            raise SourceError(f"--student-kind: preset {preset!r} has one trained student, of kind {TRAINED_PRESETS[preset]!r}; got student kind {student_kind!r}")
        from export.world.preset import shapes_sources

        return shapes_sources()
    paths = write_preset(root, preset)
    student = paths["student"] if student_kind == "cd" else write_student(student_kind, root / f"student-{student_kind}", preset)
    sources = Sources(teacher=paths["teacher"], student=student, student_kind=student_kind, reward=paths["reward"], reward_config=paths["reward_config"])
    if refiner:
        sources.refiner = write_xl_refiner(root / "refiner", Path(paths["teacher"]), preset)
        sources.refiner_max_sigma = refiner_max_sigma
    return sources


@dataclass(frozen=True)
class PresetPlan:
    """What ``export_repository`` takes for a preset: its sources, serving defaults and tau's calibration prompts.

    ``defaults`` None means the student kind's own; ``calibration_prompts`` None means no calibration.
    """

    sources: Sources
    defaults: "GenerationSettings | None"
    calibration_prompts: list[str] | None


def preset_plan(preset: str, root: Path, *, calibration_prompts: int | None = None, student_kind: str | None = None) -> PresetPlan:
    """The export plan of ``preset``: random-weight presets calibrate on the first ``calibration_prompts``
    generic held-out prompts; a trained preset on its own calibration file, with the defaults it was trained for."""
    sources = preset_sources(preset, root, student_kind)
    if preset in TRAINED_PRESETS:
        from export.world.preset import calibration_prompts as world_prompts
        from export.world.preset import shapes_defaults

        return PresetPlan(sources, shapes_defaults(), world_prompts())
    from bll_python.prompts import read_prompts
    from export.defaults import CALIBRATION_PROMPTS

    prompts = read_prompts(CALIBRATION_PROMPTS)[:calibration_prompts] if CALIBRATION_PROMPTS.is_file() else None
    return PresetPlan(sources, None, prompts or None)
