"""LoRA students (LCM-LoRA, Hyper-SD, Flash): find the file, check it against the UNet, fuse it.

The LoRA file is the whole student checkpoint: its base is a fresh copy of the teacher UNet, so the
teacher component keeps its own, unfused weights.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from export.checkpoints.errors import SourceError, first_sentence, keys_preview
from export.checkpoints.unet import load_unet_folder

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

logger = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_weights default name


def lora_file(path: Path) -> Path:
    """The LoRA ``.safetensors`` a student path names: the file itself, or the one in a folder."""
    if not path.exists():
        raise SourceError(f"student: {path} does not exist")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise SourceError(f"student LoRA {path}: expected a .safetensors file (diffusers or kohya key layout)")
        return path
    if (path / "unet" / "config.json").is_file() or (path / "config.json").is_file():
        raise SourceError(f"student: {path} is a full UNet folder, not a LoRA; use --student-kind cd (or lcm for a guidance-embedded UNet)")
    if (path / LORA_FILE).is_file():
        return path / LORA_FILE
    candidates = sorted(path.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise SourceError(f"student LoRA: no .safetensors file in {path}")
    raise SourceError(f"student LoRA: {path} holds several .safetensors files ({', '.join(c.name for c in candidates)}); pass the file itself")


@dataclass(frozen=True)
class LoraSummary:
    path: Path
    layout: str  # "diffusers" | "diffusers-legacy" | "kohya" | "kohya-ldm" (kohya format, original LDM module names)
    modules: int
    ranks: tuple[int, ...]


_PEFT_SUFFIXES = {".lora_A.weight": "down", ".lora_B.weight": "up"}
_LEGACY_SUFFIXES = {".lora.down.weight": "down", ".lora.up.weight": "up"}
_LEGACY_PROCESSOR = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}
_KOHYA_SUFFIXES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}


def _split_key(key: str) -> tuple[str, str, str]:
    """(layout, UNet module reference, part) for one LoRA tensor name; raises on anything else."""
    if key.startswith(("lora_te", "text_encoder")):
        raise SourceError(
            f"also adapts the text encoder ({key}); the student shares the teacher's text encoder in this "
            "deployment, so only UNet LoRAs are supported"
        )
    if key.startswith("lora_unet_"):
        name, _, rest = key.partition(".")
        part = _KOHYA_SUFFIXES.get("." + rest)
        if part is None:
            raise SourceError(f"unsupported LoRA tensor {key}: only plain LoRA (lora_down/lora_up/alpha) is supported, not LoCon mid, LoHa or DoRA")
        return "kohya", name, part
    if key.startswith("unet."):
        body = key[len("unet.") :]
        for suffix, part in _PEFT_SUFFIXES.items():
            if body.endswith(suffix):
                return "diffusers", body[: -len(suffix)], part
        for suffix, part in _LEGACY_SUFFIXES.items():
            if body.endswith(suffix):
                return "diffusers-legacy", body[: -len(suffix)], part
        for proc, target in _LEGACY_PROCESSOR.items():
            for updown in ("down", "up"):
                suffix = f".processor.{proc}.{updown}.weight"
                if body.endswith(suffix):
                    return "diffusers-legacy", f"{body[: -len(suffix)]}.{target}", updown
        raise SourceError(f"unsupported LoRA tensor {key}: expected unet.<module>.lora_A.weight / lora_B.weight")
    raise SourceError(f"unrecognised LoRA key {key}: expected the diffusers layout (unet.<module>.lora_A.weight) or the kohya layout (lora_unet_<module>.lora_down.weight)")


def _pair_key(layout: str, ref: str, present: str, need: str) -> str:
    """The name the missing half of a LoRA pair would have in the file's own layout."""
    if layout == "kohya":
        return f"{ref}.lora_{need}.weight"
    if layout == "diffusers":
        return f"unet.{ref}.lora_{'A' if need == 'down' else 'B'}.weight"
    other = "up" if need == "down" else "down"
    return present[: -len(f"{other}.weight")] + f"{need}.weight"


def _describe(module: Any) -> str:
    from torch import nn

    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features} -> {module.out_features})"
    return f"Conv2d({module.in_channels} -> {module.out_channels}, kernel {tuple(module.kernel_size)})"


def _expected_shapes(module: Any, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    from torch import nn

    if isinstance(module, nn.Linear):
        return (rank, module.in_features), (module.out_features, rank)
    return (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)


Groups = dict[tuple[str, str], dict[str, tuple[str, tuple[int, ...]]]]


def _by_module(path: Path, groups: Groups, modules: dict[str, Any], kohya_targets: dict[str, str]) -> dict[str, tuple[str, str, dict[str, tuple[str, tuple[int, ...]]]]]:
    """module name -> (layout, reference as written in the file, {part: (key, shape)}); kohya references
    resolve through ``kohya_targets``, the others name their module directly."""
    found = {}
    for (layout, ref), got in groups.items():
        name = kohya_targets.get(ref) if layout == "kohya" else ref
        if name is None or name not in modules:
            key = (got.get("down") or next(iter(got.values())))[0]
            raise SourceError(f"student LoRA {path}: {key} names no module of the teacher UNet (a LoRA for another base model?)")
        found[name] = (layout, ref, got)
    return found


def check_lora(path: Path, unet: "UNet2DConditionModel") -> LoraSummary:
    """Check every tensor of a LoRA file against the UNet it will be fused into.

    diffusers converts and loads what it recognises and only warns about the rest, and a shape
    mismatch surfaces as a long peft traceback; this names the offending key before either happens.
    """
    from safetensors import safe_open
    from torch import nn

    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a truncated or foreign file
        raise SourceError(f"student LoRA {path}: not a readable safetensors file ({first_sentence(err)})") from err
    if not shapes:
        raise SourceError(f"student LoRA {path}: the file holds no tensors")

    modules = dict(unet.named_modules())
    # (layout, reference as written in the file) -> {part: (key, shape)}
    groups: Groups = {}
    for key, shape in shapes.items():
        try:
            layout, ref, part = _split_key(key)
        except SourceError as err:
            raise SourceError(f"student LoRA {path}: {err}") from None
        groups.setdefault((layout, ref), {})[part] = (key, shape)
    layouts = {layout for layout, _ in groups}
    if len(layouts) > 1:
        raise SourceError(f"student LoRA {path}: mixes key layouts {sorted(layouts)}")
    kohya = layouts == {"kohya"}
    if not kohya:  # names as written: a key naming no module is reported before its missing pair
        found = _by_module(path, groups, modules, {})
    for (layout, ref), got in groups.items():
        for need, other in (("down", "up"), ("up", "down")):
            if need not in got:
                present = (got.get(other) or next(iter(got.values())))[0]
                raise SourceError(f"student LoRA {path}: {_pair_key(layout, ref, present, need)} is missing (its pair {present} is there)")
    if kohya:  # diffusers' conversion needs complete pairs
        found = _by_module(path, groups, modules, kohya_module_names(path, unet))

    ranks = set()
    for name, (layout, ref, got) in found.items():
        module = modules[name]
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise SourceError(f"student LoRA {path}: {got['down'][0]} targets {name}, a {type(module).__name__}; only Linear and Conv2d layers can take a LoRA")
        (down_key, down), (up_key, up) = got["down"], got["up"]
        rank = down[0] if down else 0
        want_down, want_up = _expected_shapes(module, rank)
        for key, shape, want in ((down_key, down, want_down), (up_key, up, want_up)):
            if shape != want:
                raise SourceError(f"student LoRA {path}: {key} has shape {list(shape)}, expected {list(want)} for {name} = {_describe(module)}")
        if "alpha" in got and got["alpha"][1] not in ((), (1,)):
            raise SourceError(f"student LoRA {path}: {got['alpha'][0]} has shape {list(got['alpha'][1])}; alpha is a scalar")
        ranks.add(rank)
    layout = layouts.pop()
    if layout == "kohya" and any(ref.startswith(_LDM_PREFIXES) for _, ref in groups):
        layout = "kohya-ldm"
    return LoraSummary(path, layout, len(found), tuple(sorted(ranks)))


# The original LDM / SGM UNet module names, which some kohya-format files keep instead of diffusers'.
_LDM_PREFIXES = tuple(f"lora_unet_{block}_" for block in ("input_blocks", "middle_block", "output_blocks"))


def kohya_module_names(path: Path, unet: "UNet2DConditionModel") -> dict[str, str]:
    """kohya LoRA name (``lora_unet_...``, diffusers' or the original LDM module names) -> the UNet module
    diffusers loads it into.

    Asks diffusers' own conversion (``lora_state_dict`` with the UNet's config, which maps LDM block
    numbers to diffusers' blocks) and follows each tensor to its converted key, so the check names
    exactly the modules :func:`fuse_lora` will adapt.
    """
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    original = load_file(str(path))
    lora_name = {id(tensor): key.partition(".")[0] for key, tensor in original.items()}
    with _quiet_diffusers():
        try:
            converted, _ = StableDiffusionPipeline.lora_state_dict(dict(original), unet_config=unet.config)
        except (ValueError, KeyError, IndexError) as err:
            raise SourceError(f"student LoRA {path}: diffusers cannot convert its kohya key names: {first_sentence(err)}") from err
    names: dict[str, str] = {}
    for key, tensor in converted.items():
        _, module, _ = _split_key(key)  # diffusers' legacy layout: unet.<module>.lora.down.weight
        names[lora_name[id(tensor)]] = module
    return names


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    # A UNet-only pipeline makes diffusers warn that the LoRA has no text-encoder keys, which is
    # exactly what check_lora required.
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(level)


def fuse_lora(unet: "UNet2DConditionModel", lora: Path) -> "UNet2DConditionModel":
    """Fuse a LoRA into ``unet`` in place, the way diffusers users do, and drop the LoRA layers.

    ``load_lora_weights`` converts the kohya layout and applies each module's ``alpha / rank``;
    ``fuse_lora`` folds ``scale * B @ A`` into the base weights; ``unload_lora_weights`` then
    removes the peft wrappers so the exported graph is a plain UNet with the fused weights.
    """
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=None,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with _quiet_diffusers():
        try:
            # The UNet's config lets diffusers map the original LDM block numbers of a kohya file.
            pipe.load_lora_weights(str(lora), unet_config=unet.config)
            pipe.fuse_lora(components=["unet"])
            pipe.unload_lora_weights()
        except (ValueError, RuntimeError, KeyError) as err:
            raise SourceError(f"student LoRA {lora}: diffusers could not fuse it: {first_sentence(err)}") from err
    leftovers = [n for n, m in unet.named_modules() if type(m).__module__.startswith("peft")]
    if leftovers:
        raise SourceError(f"student LoRA {lora}: LoRA layers remain after fusing ({keys_preview(leftovers)})")
    return unet.eval()


def fused_lora_unet(student: Path, teacher: Path) -> "UNet2DConditionModel":
    """The student UNet of a LoRA kind: the LoRA checked against, then fused into, the teacher's UNet loaded afresh."""
    lora = lora_file(student)
    unet = load_unet_folder(teacher / "unet", "teacher")
    summary = check_lora(lora, unet)
    logger.info("student LoRA %s: %s layout, %d modules, rank %s", lora, summary.layout, summary.modules, summary.ranks)
    return fuse_lora(unet, lora)

