"""``python -m export`` (``adaptive-export``): checkpoints in, a servable model repository out.

Two ways in:

- ``--preset tiny|small``: random-weight checkpoints in the real formats, written and exported in
  one go (what ``make export`` and ``ensure_repository`` do). ``--student-kind`` picks which
  student the preset gets (default ``cd``).
- ``--teacher --student --student-kind --reward``: real checkpoints, each a local path or a Hugging
  Face Hub id (``org/name``, or ``org/name/file.safetensors`` for one file of a repository).

Everything serving needs (student kind, its sampler, defaults, the calibrated tau) is written into
the repository's ``assets/deployment.json``; the server takes no flags about the model.
Errors about the inputs print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from export.students import STUDENT_KINDS, SourceError, StudentKind, check_sampler_overrides, student_kind

PRESET_NAMES = ("tiny", "small")
PRESET_CALIBRATION_PROMPTS = 64  # as ensure_repository
HUB_TIMEOUT_S = 3.0
# org/name, optionally followed by a file path inside the repository.
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*)(?:/(?P<file>[\w.\-/]+))?")

# The files of a diffusers SD1.5 pipeline the export reads; the hub repositories also hold
# .ckpt/.bin/fp16/non-EMA copies worth gigabytes that it never needs.
TEACHER_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]
# A distilled UNet published as a pipeline (unet/ + scheduler/) or as a bare UNet folder.
FULL_STUDENT_FILES = ["unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json", "config.json", "diffusion_pytorch_model.safetensors"]
REWARD_FILE = "ImageReward.pt"  # THUDM/ImageReward


class UsageError(ValueError):
    """A bad command line; reported in one line like every other input error."""


class HubUnavailable(SourceError):
    """A hub id was given but the Hugging Face Hub cannot be reached (or HF_HUB_OFFLINE is set)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    kinds = ", ".join(STUDENT_KINDS)
    p = _Parser(
        prog="python -m export",
        description="Export a teacher, a few-step student and ImageReward into a Triton model repository (ONNX Runtime).",
        epilog="Examples:\n  python -m export --preset tiny\n"
        "  python -m export --teacher ./sd15 --student ./lcm-lora-sdv1-5 --student-kind lcm-lora --reward ./ImageReward.pt\n"
        "See export/CHECKPOINTS.md for the published checkpoints and their sampler settings.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("checkpoints")
    src.add_argument("--preset", metavar="tiny|small", help="write random-weight checkpoints in the real formats and export them")
    src.add_argument("--teacher", metavar="PATH_OR_HUB_ID", help="diffusers SD1.5 pipeline folder")
    src.add_argument("--student", metavar="PATH_OR_HUB_ID", help="full UNet folder (cd, lcm) or LoRA .safetensors / folder (lcm-lora, hyper-sd, flash)")
    src.add_argument("--student-kind", metavar="KIND", help=f"one of: {kinds} (default with --preset: cd)")
    src.add_argument("--reward", metavar="PATH_OR_HUB_ID", help="original ImageReward.pt (hub: THUDM/ImageReward)")
    src.add_argument("--reward-config", metavar="JSON", help="ImageReward dims; default: the published ImageReward-v1.0")
    src.add_argument("--list-kinds", action="store_true", help="print the student kinds, their samplers and sources, and exit")

    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="repository folder (default: artifacts/<name>/repository)")
    out.add_argument("--name", help="name under artifacts/ (default: the preset, or the student kind)")
    out.add_argument("--force", action="store_true", help="replace an existing export")
    out.add_argument("--max-rows", type=int, default=None, metavar="N", help="largest batch of prompts per model call (default 8)")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    out.add_argument("--verbose", action="store_true", help="show the libraries' own warnings")

    d = p.add_argument_group("serving defaults recorded in the repository (default: the student kind's published settings)")
    d.add_argument("--student-steps", type=int, metavar="N")
    d.add_argument("--teacher-steps", type=int, metavar="N")
    d.add_argument("--guidance-scale", type=float, metavar="W", help="teacher CFG scale; also the student's for cd (CFG) and lcm (w-embedding)")
    d.add_argument("--sigma", type=float, metavar="S", help="refinement rollback strength in (0, 1]")
    d.add_argument("--k", type=float, metavar="K", help="default percentile for tau (0..100)")
    d.add_argument("--eta", type=float, metavar="ETA", help="TCD stochasticity in [0, 1] (hyper-sd only; default 0.3)")

    c = p.add_argument_group("tau calibration")
    c.add_argument("--calibration-prompts", metavar="FILE", help="held-out prompts, one a line (default: benchmarks/prompts/heldout.txt)")
    c.add_argument("--calibration-count", type=int, metavar="N", help=f"how many of them to use; 0 skips calibration (default: all; {PRESET_CALIBRATION_PROMPTS} for presets)")
    return p


# ---------------------------------------------------------------------------------------------
# Hub ids
# ---------------------------------------------------------------------------------------------


def _offline_reason() -> str | None:
    """Why the hub cannot be used right now, or None if it answers."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"} or constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_TIMEOUT_S)
    except urllib.error.HTTPError:
        return None  # the server answered, even if not with 200
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"{endpoint} did not answer within {HUB_TIMEOUT_S:g} s ({reason})"
    return None


def _hub_fetch(repo: str, file: str | None, patterns: list[str] | None, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    if file is not None:
        return Path(hf_hub_download(repo, file, local_files_only=local_only, etag_timeout=10))
    return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=local_only, etag_timeout=10))


def resolve_source(value: str, flag: str, *, file: str | None = None, patterns: list[str] | None = None) -> Path:
    """A local path as is; a hub id downloaded (only the files named) when the hub answers.

    ``file`` is the default file to fetch from a repository id without a file part (a LoRA, the
    ImageReward checkpoint); ``patterns`` limit a folder snapshot (a pipeline, a UNet).
    """
    path = Path(value).expanduser()
    if path.exists():
        return path
    match = HUB_ID.fullmatch(value)
    if match is None or value.startswith((".", "/", "~")):
        raise SourceError(f"{flag}: {value} does not exist")
    repo, file = match["repo"], match["file"] or file
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    reason = _offline_reason()
    try:
        # A copy already in the local hub cache needs no network, so try it first either way.
        return _hub_fetch(repo, file, patterns, local_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    if reason is not None:
        what = f"{repo}/{file}" if file else repo
        raise HubUnavailable(
            f"{flag} {value}: not a local path, and fetching it from the Hugging Face Hub is impossible: the hub is unreachable "
            f"({reason}). Download {what} on a machine with access and pass the local path."
        )
    try:
        return _hub_fetch(repo, file, patterns, local_only=False)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        raise SourceError(f"{flag} {value}: not a local path, and the hub could not provide it: {' '.join(str(err).split())[:300]}") from err


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _defaults(kind: StudentKind, args: argparse.Namespace):
    from bll_python.settings import GenerationSettings, SettingsError

    given = {
        "student_steps": args.student_steps,
        "teacher_steps": args.teacher_steps,
        "guidance_scale": args.guidance_scale,
        "sigma": args.sigma,
        "k": args.k,
    }
    try:
        return GenerationSettings(**{**kind.defaults, **{k: v for k, v in given.items() if v is not None}})
    except SettingsError as err:
        raise UsageError(f"--{err.field.replace('_', '-')}: {str(err).split(': ', 1)[-1]}") from None


def _calibration_prompts(args: argparse.Namespace) -> list[str] | None:
    from export.build import CALIBRATION_PROMPTS, read_prompts

    count = args.calibration_count
    if count is None and args.preset:
        count = PRESET_CALIBRATION_PROMPTS
    if count is not None and count < 0:
        raise UsageError(f"--calibration-count: got {count}; expected 0 or more")
    if count == 0:
        return None
    path = Path(args.calibration_prompts) if args.calibration_prompts else CALIBRATION_PROMPTS
    if not path.is_file():
        raise SourceError(f"--calibration-prompts: {path} does not exist")
    prompts = read_prompts(path)
    if not prompts:
        raise SourceError(f"--calibration-prompts: {path} holds no prompts")
    return prompts[:count] if count is not None else prompts


def _checkpoint_dir(out: Path) -> Path:
    # Beside the repository, as ensure_repository lays out artifacts/<preset>/{checkpoints,repository}.
    return out.parent / "checkpoints" if out.name == "repository" else out.with_name(out.name + "-checkpoints")


def _preset_sources(preset: str, kind: StudentKind, out: Path):
    from export.presets import write_preset, write_student
    from export.sources import Sources

    root = _checkpoint_dir(out)
    paths = write_preset(root, preset)
    student = paths["student"] if kind.name == "cd" else write_student(kind.name, root / f"student-{kind.name}", preset)
    return Sources(teacher=paths["teacher"], student=student, student_kind=kind.name, reward=paths["reward"], reward_config=paths["reward_config"])


def _real_sources(args: argparse.Namespace, kind: StudentKind, overrides: dict[str, float]):
    from export.sources import Sources

    teacher = resolve_source(args.teacher, "--teacher", patterns=TEACHER_FILES)
    if kind.is_lora:
        student = resolve_source(args.student, "--student", file="pytorch_lora_weights.safetensors")
    else:
        student = resolve_source(args.student, "--student", patterns=FULL_STUDENT_FILES)
    reward = resolve_source(args.reward, "--reward", file=REWARD_FILE)
    reward_config = None
    if args.reward_config:
        reward_config = Path(args.reward_config).expanduser()
        if not reward_config.is_file():
            raise SourceError(f"--reward-config: {reward_config} does not exist")
    return Sources(teacher=teacher, student=student, student_kind=kind.name, reward=reward, reward_config=reward_config, sampler_overrides=overrides)


def _prepare_out(out: Path, force: bool) -> bool:
    """True if ``out`` already holds an export. Refuses to replace a folder that is not one."""
    from bll_python.deployment import MANIFEST
    from bll_python.layout import assets_dir

    exported = (assets_dir(out) / MANIFEST).is_file()
    if out.exists() and not exported and (out.is_file() or any(out.iterdir())):
        raise SourceError(f"--out {out} exists and is not a model repository; refusing to replace it")
    return exported


@contextmanager
def _quiet_libraries(enabled: bool) -> Iterator[None]:
    """Silence diffusers'/transformers' advisory warnings for the run, restoring the levels after."""
    import logging

    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    if not enabled:
        yield
        return
    levels = dlogging.get_verbosity(), tlogging.get_verbosity(), logging.getLogger("export").level
    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    logging.getLogger("export").setLevel(logging.ERROR)
    try:
        yield
    finally:
        dlogging.set_verbosity(levels[0])
        tlogging.set_verbosity(levels[1])
        logging.getLogger("export").setLevel(levels[2])


def _report(summary: Any, out: Path) -> str:
    from bll_python.deployment import Deployment
    from bll_python.layout import assets_dir

    dep = Deployment.load(assets_dir(out))
    kind = STUDENT_KINDS[dep.student_kind]
    sched = dep.student_scheduler
    d = dep.defaults
    cfg = "true CFG" if dep.student_uses_cfg else ("w-embedding (no CFG)" if dep.timestep_cond_dim else "no CFG; guidance_scale drives the teacher only")
    step = ", ".join(f"{k}={v}" for k, v in sched.step_kwargs.items())
    lines = [
        str(summary),
        f"  student kind  {kind.name}: {kind.description}",
        f"  sampler       {sched.cls}(timestep_spacing={sched.config.get('timestep_spacing')!r}){'  step(' + step + ')' if step else ''}; {cfg}",
        f"  teacher       {dep.teacher_scheduler.cls}({dep.teacher_scheduler.config.get('algorithm_type')}, order {dep.teacher_scheduler.config.get('solver_order')})",
        f"  defaults      student_steps={d.student_steps} teacher_steps={d.teacher_steps} guidance_scale={d.guidance_scale:g} sigma={d.sigma:g} strategy={d.strategy.value}",
    ]
    if dep.calibration is not None:
        k = d.k if d.k is not None else dep.default_k
        lines.append(f"  default tau   {dep.calibration.tau(k):.4f} (k={k:g}, from {dep.calibration.prompts} prompts)")
    else:
        lines.append("  default tau   none (no calibration): requests must pass tau")
    total = sum(summary.sizes.values())
    lines.append(f"  total         {total / 2**20:.2f} MiB in {len(summary.sizes)} ONNX models")
    lines.append(f"serve it:  python -m export.serve --repository {out}")
    return "\n".join(lines)


def _kinds_table() -> str:
    rows = []
    for kind in STUDENT_KINDS.values():
        rows.append(f"{kind.name:<9} {kind.description}\n          defaults {kind.defaults}; source: {kind.source}")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    if args.list_kinds:
        print(_kinds_table())
        return 0
    kind = student_kind(args.student_kind or "cd")
    if args.preset is not None:
        if args.preset not in PRESET_NAMES:
            raise UsageError(f"--preset {args.preset!r} is not a preset; choose one of {list(PRESET_NAMES)}")
        given = [f"--{f.replace('_', '-')}" for f in ("teacher", "student", "reward", "reward_config") if getattr(args, f)]
        if given:
            raise UsageError(f"--preset writes its own random-weight checkpoints; drop {', '.join(given)}")
    else:
        missing = [f"--{f.replace('_', '-')}" for f in ("teacher", "student", "student_kind", "reward") if not getattr(args, f)]
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (or use --preset tiny|small)")
    if args.max_rows is not None and args.max_rows < 1:
        raise UsageError(f"--max-rows: got {args.max_rows}; expected 1 or more")
    overrides = check_sampler_overrides(kind, {"eta": args.eta} if args.eta is not None else {})
    defaults = _defaults(kind, args)
    prompts = _calibration_prompts(args)

    from export.build import DEFAULT_MAX_ROWS, DEFAULT_ROOT

    name = args.name or ((args.preset if kind.name == "cd" else f"{args.preset}-{kind.name}") if args.preset else kind.name)
    out = Path(args.out).expanduser() if args.out else Path(DEFAULT_ROOT) / name / "repository"
    if _prepare_out(out, args.force) and not args.force:
        if args.preset:
            print(f"{out} already holds the {name} export (pass --force to export it again)")
            return 0
        raise SourceError(f"--out {out} already holds an export; pass --force to replace it")
    progress = not args.quiet
    start = time.perf_counter()
    staging = out.with_name(out.name + ".partial")
    with _quiet_libraries(not args.verbose):
        if args.preset:
            if progress:
                print(f"writing the {args.preset} preset's random-weight checkpoints ({kind.name} student) ...", file=sys.stderr)
            sources = _preset_sources(args.preset, kind, out)
            sources.sampler_overrides = overrides
        else:
            sources = _real_sources(args, kind, overrides)
        if progress:
            what = "fusing the student LoRA into a copy of the teacher UNet" if kind.is_lora else "loading the student UNet"
            print(f"loading the teacher, {what}, loading ImageReward ...", file=sys.stderr)

        from export.build import export_repository

        shutil.rmtree(staging, ignore_errors=True)
        try:
            summary = export_repository(
                sources,
                staging,
                preset=args.preset or name,
                max_rows=args.max_rows or DEFAULT_MAX_ROWS,
                defaults=defaults,
                calibration_prompts=prompts,
                progress=progress,
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # never leave a half-written repository behind
            raise
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out)
    summary.repository = out
    summary.seconds = time.perf_counter() - start
    print(_report(summary, out))
    return 0


def _input_error(err: Exception) -> bool:
    """Whether ``err`` is about the user's input (one line, status 2) rather than a bug (traceback)."""
    from bll_python.settings import SettingsError

    input_errors: tuple[type[Exception], ...] = (UsageError, SourceError, SettingsError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
    # Imported only if already loaded: importing it pulls in transformers, too slow for a typo.
    reward = sys.modules.get("export.image_reward")
    if reward is not None:
        input_errors += (reward.CheckpointError,)
    return isinstance(err, input_errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input) instead of raising for input errors."""
    parser = build_parser()
    try:
        return run(parser.parse_args(argv))
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except Exception as err:
        if not _input_error(err):
            raise
        hint = " (see --help)" if isinstance(err, UsageError) else ""
        print(f"{parser.prog}: error: {' '.join(str(err).split())}{hint}", file=sys.stderr)
        return 2
