"""Student kinds: how each distilled model is loaded and which sampler it was distilled for.

A kind knows three things: how to turn its checkpoint into one plain ``UNet2DConditionModel`` (a
full distilled UNet, or a LoRA fused into the teacher's UNet), which diffusers scheduler and
``step`` arguments its authors sample it with, and whether it runs true classifier-free guidance.
Adding a kind is adding one entry to ``STUDENT_KINDS``.

| kind       | checkpoint                               | sampler (diffusers)                         | CFG  | source |
|------------|------------------------------------------|---------------------------------------------|------|--------|
| `cd`       | full UNet folder                         | LCMScheduler (multistep consistency)        | true | adaptive paper, supplement A (CD-SD1.5: 5 steps, w in [1, 8]) |
| `lcm`      | full UNet with `time_cond_proj_dim`      | LCMScheduler, w fed as an embedding         | no   | LCM paper; SimianLuo/LCM_Dreamshaper_v7 card (4 steps, w = 8) |
| `lcm-lora` | LoRA, fused into the teacher UNet        | LCMScheduler                                | no   | latent-consistency/lcm-lora-sdv1-5 card (4 steps, guidance 0) |
| `hyper-sd` | LoRA, fused into the teacher UNet        | TCDScheduler, ``step(eta=0.3)``             | no   | Hyper-SD paper 3.3 (TCD, 1-8 steps); ByteDance/Hyper-SD card |
| `flash`    | LoRA, fused into the teacher UNet        | LCMScheduler(timestep_spacing="trailing")   | no   | Flash Diffusion paper (4 targeted timesteps); jasperai/flash-sd card |

The kinds marked "no" were distilled with the teacher's guidance folded in, so the serving
``guidance_scale`` drives only the teacher (and, for ``lcm``, the w-embedding).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from bll_python.deployment import SchedulerRecipe

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

logger = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_weights default name


class SourceError(ValueError):
    """A checkpoint is missing, malformed or of an unsupported kind; the message names it."""


# ---------------------------------------------------------------------------------------------
# Full UNets
# ---------------------------------------------------------------------------------------------


def _first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split())
    # diffusers appends advice on ignore_mismatched_sizes that does not apply to a serving export.
    return text.split(" If you want to instead overwrite")[0]


def _keys_preview(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def load_unet_folder(unet_dir: Path, what: str) -> "UNet2DConditionModel":
    """A diffusers UNet folder, refusing what ``from_pretrained`` would only warn about.

    diffusers fills weights missing from the checkpoint with random values and just logs it; an
    export of such a UNet would serve noise, so missing or mismatched weights are errors here.
    """
    from diffusers import UNet2DConditionModel

    if not (unet_dir / "config.json").is_file():
        raise SourceError(f"{what}: no UNet config.json in {unet_dir}")
    try:
        unet, info = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise SourceError(f"{what}: cannot load the UNet in {unet_dir}: {_first_sentence(err)}") from err
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise SourceError(f"{what}: {unet_dir} lacks {len(missing)} weight(s) its config.json needs: {_keys_preview(missing)}")
    mismatched = [f"{k} {tuple(got)} != {tuple(want)}" for k, got, want in info.get("mismatched_keys") or []]
    if mismatched:
        raise SourceError(f"{what}: {unet_dir} has weights of the wrong shape: {_keys_preview(mismatched)}")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        logger.warning("%s: %s carries %d weight(s) the UNet does not use: %s", what, unet_dir, len(unexpected), _keys_preview(unexpected))
    return unet.eval()


def full_unet_dir(path: Path) -> Path:
    """The UNet folder of a student given as a UNet folder or as a folder holding ``unet/``."""
    if not path.exists():
        raise SourceError(f"student: {path} does not exist")
    if path.is_file():
        hint = "; a LoRA takes --student-kind lcm-lora, hyper-sd or flash" if path.suffix == ".safetensors" else ""
        raise SourceError(f"student: {path} is a file, but a full-UNet student is a diffusers folder (config.json + weights, or unet/){hint}")
    if (path / "unet" / "config.json").is_file():
        return path / "unet"
    if (path / "config.json").is_file():
        return path
    if any(path.glob("*.safetensors")):
        raise SourceError(f"student: {path} holds a .safetensors file but no UNet config.json; a LoRA needs --student-kind lcm-lora, hyper-sd or flash")
    raise SourceError(f"student: no UNet config.json in {path} or {path / 'unet'}")


def load_full_unet(path: Path) -> "UNet2DConditionModel":
    """A diffusers UNet folder, or a student folder holding one under ``unet/``."""
    return load_unet_folder(full_unet_dir(path), "student")


def _load_cd_unet(student: Path, teacher: Path) -> "UNet2DConditionModel":
    unet = load_full_unet(student)
    if unet.config.time_cond_proj_dim is not None:
        raise SourceError(
            f"student: {student} has a guidance embedding (time_cond_proj_dim={unet.config.time_cond_proj_dim}): "
            "it is a latent consistency model; use --student-kind lcm"
        )
    return unet


def _load_lcm_unet(student: Path, teacher: Path) -> "UNet2DConditionModel":
    unet = load_full_unet(student)
    if unet.config.time_cond_proj_dim is None:
        raise SourceError(
            f"student: {student} has no guidance embedding (time_cond_proj_dim is null), which --student-kind lcm needs; "
            "a full UNet sampled with true CFG is --student-kind cd"
        )
    return unet


# ---------------------------------------------------------------------------------------------
# LoRA students
# ---------------------------------------------------------------------------------------------


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
    layout: str  # "diffusers" | "diffusers-legacy" | "kohya"
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
        raise SourceError(f"student LoRA {path}: not a readable safetensors file ({_first_sentence(err)})") from err
    if not shapes:
        raise SourceError(f"student LoRA {path}: the file holds no tensors")

    modules = dict(unet.named_modules())
    kohya_names = {"lora_unet_" + name.replace(".", "_"): name for name in modules if name}
    # module name -> (layout, reference as written in the file, {part: (key, shape)})
    found: dict[str, tuple[str, str, dict[str, tuple[str, tuple[int, ...]]]]] = {}
    layouts: set[str] = set()
    for key, shape in shapes.items():
        try:
            layout, ref, part = _split_key(key)
        except SourceError as err:
            raise SourceError(f"student LoRA {path}: {err}") from None
        layouts.add(layout)
        name = kohya_names.get(ref) if layout == "kohya" else ref
        if name is None or name not in modules:
            raise SourceError(f"student LoRA {path}: {key} names no module of the teacher UNet (a LoRA for another base model?)")
        found.setdefault(name, (layout, ref, {}))[2][part] = (key, shape)
    if len(layouts) > 1:
        raise SourceError(f"student LoRA {path}: mixes key layouts {sorted(layouts)}")

    ranks = set()
    for name, (layout, ref, got) in found.items():
        module = modules[name]
        for need, other in (("down", "up"), ("up", "down")):
            if need not in got:
                present = (got.get(other) or next(iter(got.values())))[0]
                raise SourceError(f"student LoRA {path}: {_pair_key(layout, ref, present, need)} is missing (its pair {present} is there)")
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
    return LoraSummary(path, layouts.pop(), len(found), tuple(sorted(ranks)))


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
            pipe.load_lora_weights(str(lora))
            pipe.fuse_lora(components=["unet"])
            pipe.unload_lora_weights()
        except (ValueError, RuntimeError, KeyError) as err:
            raise SourceError(f"student LoRA {lora}: diffusers could not fuse it: {_first_sentence(err)}") from err
    leftovers = [n for n, m in unet.named_modules() if type(m).__module__.startswith("peft")]
    if leftovers:
        raise SourceError(f"student LoRA {lora}: LoRA layers remain after fusing ({_keys_preview(leftovers)})")
    return unet.eval()


def _fused_lora_unet(student: Path, teacher: Path) -> "UNet2DConditionModel":
    # The LoRA file is the whole student checkpoint: its base is a fresh copy of the teacher UNet,
    # so the teacher component keeps its own, unfused weights.
    lora = lora_file(student)
    unet = load_unet_folder(teacher / "unet", "teacher")
    summary = check_lora(lora, unet)
    logger.info("student LoRA %s: %s layout, %d modules, rank %s", lora, summary.layout, summary.modules, summary.ranks)
    return fuse_lora(unet, lora)


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def _scheduler_config(path: Path | None, fallback: dict[str, Any]) -> dict[str, Any]:
    if path is not None and (path / "scheduler_config.json").is_file():
        cfg = json.loads((path / "scheduler_config.json").read_text())
        return {k: v for k, v in cfg.items() if not k.startswith("_")}
    return dict(fallback)


def _recipe(cls: str, base: dict[str, Any], *, step_kwargs: dict[str, Any] | None = None, **overrides: Any) -> SchedulerRecipe:
    import inspect

    import diffusers

    scheduler_cls = getattr(diffusers, cls)
    # A teacher's PNDM config carries keys (skip_prk_steps) other classes only warn about and drop.
    accepted = set(inspect.signature(scheduler_cls.__init__).parameters)
    config = dict(scheduler_cls.from_config({k: v for k, v in {**base, **overrides}.items() if k in accepted}).config)
    return SchedulerRecipe(cls=cls, config={k: v for k, v in config.items() if not k.startswith("_")}, step_kwargs=dict(step_kwargs or {}))


def _student_folder_scheduler(path: Path) -> Path | None:
    # A full-UNet student may ship its own sampler config (LCM_Dreamshaper_v7 does, under scheduler/).
    return path / "scheduler" if path.is_dir() else None


def _cd_scheduler(path: Path, teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    # Multistep consistency sampling (the paper's CD-SD1.5), which diffusers implements as LCMScheduler.
    return _recipe("LCMScheduler", _scheduler_config(_student_folder_scheduler(path), teacher_schedule))


def _lcm_scheduler(path: Path, teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    return _recipe("LCMScheduler", _scheduler_config(_student_folder_scheduler(path), teacher_schedule))


def _lcm_lora_scheduler(path: Path, teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    # The card: pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config), i.e. the base model's schedule.
    return _recipe("LCMScheduler", teacher_schedule)


TCD_ETA = 0.3


def _hyper_sd_scheduler(path: Path, teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    # TCDScheduler.from_config(pipe.scheduler.config) and pipe(..., eta=...). The card's comment:
    # lower eta gives more detail in multi-step sampling; 0.3 is TCD's own default gamma.
    return _recipe("TCDScheduler", teacher_schedule, step_kwargs={"eta": TCD_ETA})


def _flash_scheduler(path: Path, teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    # The card: LCMScheduler.from_pretrained(<SD1.5>, subfolder="scheduler", timestep_spacing="trailing").
    return _recipe("LCMScheduler", teacher_schedule, timestep_spacing="trailing")


@dataclass(frozen=True)
class StudentKind:
    name: str
    description: str
    # (student source, teacher pipeline folder) -> one plain UNet: LoRA kinds fuse into the teacher's.
    load_unet: Callable[[Path, Path], "UNet2DConditionModel"]
    scheduler: Callable[[Path, dict[str, Any]], SchedulerRecipe]
    uses_cfg: bool = True
    defaults: dict[str, Any] = field(default_factory=dict)
    is_lora: bool = False
    # Sampler ``step`` arguments a user may override at export (e.g. TCD's eta).
    tunable: tuple[str, ...] = ()
    source: str = ""


STUDENT_KINDS: dict[str, StudentKind] = {
    "cd": StudentKind(
        "cd",
        "full distilled UNet, true classifier-free guidance, multistep consistency sampling",
        _load_cd_unet,
        _cd_scheduler,
        uses_cfg=True,
        defaults={"student_steps": 5, "guidance_scale": 8.0},
        source="adaptive teacher-student paper, supplement A: CD-SD1.5, multistep stochastic consistency sampler, 5 steps, CFG applied directly (trained for w in [1, 8])",
    ),
    "lcm": StudentKind(
        "lcm",
        "full latent consistency UNet with a guidance embedding (time_cond_proj_dim), no CFG",
        _load_lcm_unet,
        _lcm_scheduler,
        uses_cfg=False,
        defaults={"student_steps": 4, "guidance_scale": 8.0},
        source="LCM paper (w-conditioned consistency distillation); SimianLuo/LCM_Dreamshaper_v7 card: LCMScheduler, num_inference_steps=4, guidance_scale=8.0",
    ),
    "lcm-lora": StudentKind(
        "lcm-lora",
        "LCM-LoRA fused into the teacher UNet, LCMScheduler, no CFG",
        _fused_lora_unet,
        _lcm_lora_scheduler,
        uses_cfg=False,
        defaults={"student_steps": 4},
        is_lora=True,
        source="latent-consistency/lcm-lora-sdv1-5 card: LCMScheduler.from_config(pipe.scheduler.config), fuse_lora, num_inference_steps=4, guidance_scale=0",
    ),
    "hyper-sd": StudentKind(
        "hyper-sd",
        "Hyper-SD15 LoRA fused into the teacher UNet, TCDScheduler with eta, no CFG",
        _fused_lora_unet,
        _hyper_sd_scheduler,
        uses_cfg=False,
        defaults={"student_steps": 4},
        is_lora=True,
        tunable=("eta",),
        source="Hyper-SD paper 3.3 (TCD scheduler, 1 to 8 steps); ByteDance/Hyper-SD card: fuse_lora, TCDScheduler.from_config(pipe.scheduler.config), guidance_scale=0, eta (lower = more detail); eta 0.3 = TCD's default gamma",
    ),
    "flash": StudentKind(
        "flash",
        "Flash Diffusion SD1.5 LoRA fused into the teacher UNet, LCMScheduler (trailing), no CFG",
        _fused_lora_unet,
        _flash_scheduler,
        uses_cfg=False,
        defaults={"student_steps": 4},
        is_lora=True,
        source="Flash Diffusion paper (student trained on 4 targeted timesteps, teacher CFG distilled in); jasperai/flash-sd card: LCMScheduler(timestep_spacing='trailing'), num_inference_steps=4, guidance_scale=0",
    ),
}


def student_kind(name: str) -> StudentKind:
    if name not in STUDENT_KINDS:
        raise SourceError(f"--student-kind {name!r} is not supported; choose one of {sorted(STUDENT_KINDS)}")
    return STUDENT_KINDS[name]


def check_sampler_overrides(kind: StudentKind, overrides: dict[str, Any] | None) -> dict[str, float]:
    """Validate sampler ``step`` overrides (e.g. ``{"eta": 0.5}``) against the kind's tunables."""
    checked: dict[str, float] = {}
    for key, value in (overrides or {}).items():
        if key not in kind.tunable:
            takers = [k.name for k in STUDENT_KINDS.values() if key in k.tunable]
            raise SourceError(f"--{key} does not apply to --student-kind {kind.name}; it applies to {takers}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise SourceError(f"--{key}: got {value!r}; allowed range [0, 1]")
        checked[key] = float(value)
    return checked


def apply_sampler_overrides(kind: StudentKind, recipe: SchedulerRecipe, overrides: dict[str, Any] | None) -> SchedulerRecipe:
    recipe.step_kwargs.update(check_sampler_overrides(kind, overrides))
    return recipe


def teacher_recipe(teacher_schedule: dict[str, Any]) -> SchedulerRecipe:
    """DPM-Solver++ 2M on the teacher's own noise schedule (the paper's teacher solver)."""
    return _recipe("DPMSolverMultistepScheduler", teacher_schedule, algorithm_type="dpmsolver++", solver_order=2)
