"""``python -m export`` (``adaptive-export``): checkpoints in, a servable model repository out.

Two ways in:

- ``--preset tiny|small|tiny-xl``: random-weight checkpoints in the real formats, written and exported in
  one go (what ``make export`` and ``ensure_repository`` do). ``--student-kind`` picks which
  student the preset gets (default ``cd``).
- ``--preset shapes``: the trained world's committed checkpoints (``export/world/``), exported with
  the serving defaults it was trained for and calibrated on its own calibration prompts.
- ``--teacher --student --student-kind --reward``: real checkpoints, each a local path or a Hugging
  Face Hub id (``org/name``, or ``org/name/file.safetensors`` for one file of a repository).

Everything serving needs (student kind, its sampler, defaults, the calibrated tau) is written into
the repository's ``assets/deployment.json``; the server takes no flags about the model.
Errors about the inputs print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from export.checkpoints.errors import SourceError
from export.checkpoints.samplers import DEFAULT_TEACHER_SAMPLER, TEACHER_SAMPLERS, teacher_sampler
from export.checkpoints.students import STUDENT_KINDS, StudentKind, check_sampler_overrides, student_kind
from export.defaults import CALIBRATION_PROMPTS, DEFAULT_MAX_ROWS, DEFAULT_ROOT, PRESET_CALIBRATION_PROMPTS, PRESET_NAMES


# ``--preset tiny-xl --refiner preset``: a preset's refiner must share its second text tower, so it is
# written with the preset's own checkpoints rather than read from a path.
PRESET_REFINER = "preset"


class UsageError(ValueError):
    """A bad command line; reported in one line like every other input error."""


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
    src.add_argument("--preset", metavar="|".join(PRESET_NAMES), help="write random-weight checkpoints in the real formats (tiny, small, tiny-xl) or take the trained ones (shapes) and export them")
    src.add_argument("--teacher", metavar="PATH_OR_HUB_ID", help="diffusers SD1.5 pipeline folder")
    src.add_argument("--student", metavar="PATH_OR_HUB_ID", help="full UNet folder (cd, lcm) or LoRA .safetensors / folder (lcm-lora, hyper-sd, flash)")
    src.add_argument("--student-kind", metavar="KIND", help=f"one of: {kinds} (default with --preset: cd; shapes: lcm)")
    src.add_argument("--reward", metavar="PATH_OR_HUB_ID", help="original ImageReward.pt (hub: THUDM/ImageReward)")
    src.add_argument("--reward-config", metavar="JSON", help="ImageReward dims; default: the published ImageReward-v1.0")
    src.add_argument(
        "--refiner",
        metavar="PATH_OR_HUB_ID",
        help=f"SDXL only: SDXL-Refiner (img2img pipeline folder), the teacher for small rollbacks; with --preset, '{PRESET_REFINER}' writes the preset's random-weight refiner",
    )
    src.add_argument("--refiner-max-sigma", type=float, default=0.5, metavar="S", help="rows refined with sigma <= S go to the refiner, larger ones to the base (default 0.5)")
    src.add_argument("--list-kinds", action="store_true", help="print the student kinds, their samplers and sources, and exit")

    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="repository folder (default: artifacts/<name>/repository)")
    out.add_argument("--name", help="name under artifacts/ (default: the preset, or the student kind)")
    out.add_argument("--force", action="store_true", help="replace an existing export")
    out.add_argument("--max-rows", type=int, default=None, metavar="N", help="largest batch of prompts per model call (default 8)")
    out.add_argument("--image-sizes", type=int, nargs=2, metavar=("MIN", "MAX"), help="the image sides requests may ask for (height/width), in pixels (default: half to 1.5x the native side)")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    out.add_argument("--verbose", action="store_true", help="show the libraries' own warnings")

    d = p.add_argument_group("serving defaults recorded in the repository (default: the student kind's published settings)")
    d.add_argument("--student-steps", type=int, metavar="N")
    d.add_argument("--teacher-steps", type=int, metavar="N")
    d.add_argument("--guidance-scale", type=float, metavar="W", help="teacher CFG scale; also the student's for cd (CFG) and lcm (w-embedding)")
    d.add_argument("--sigma", type=float, metavar="S", help="refinement rollback strength in [0.001, 1] (and >= teacher_steps / 1000 when refining)")
    d.add_argument("--k", type=float, metavar="K", help="default percentile for tau (0..100)")
    d.add_argument("--eta", type=float, metavar="ETA", help="TCD stochasticity in [0, 1] (hyper-sd only; default 0.3)")
    d.add_argument(
        "--teacher-sampler",
        metavar="NAME",
        default=None,
        help=f"the teacher's solver, one of: {', '.join(TEACHER_SAMPLERS)} (default: the family's, dpm++2m for SD1.5 and unipc for SDXL; see export/CHECKPOINTS.md)",
    )

    c = p.add_argument_group("tau calibration")
    c.add_argument("--calibration-prompts", metavar="FILE", help="held-out prompts, one a line (default: benchmarks/prompts/heldout.txt)")
    c.add_argument("--calibration-count", type=int, metavar="N", help=f"how many of them to use; 0 skips calibration (default: all; {PRESET_CALIBRATION_PROMPTS} for presets)")
    return p


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _defaults(kind: StudentKind, args: argparse.Namespace, family: str = "sd15"):
    """The serving defaults: the kind's published settings for the teacher's family, then the flags."""
    from bll_python.settings import GenerationSettings, SettingsError
    from export.checkpoints.presets import TRAINED_PRESETS

    given = {
        "student_steps": args.student_steps,
        "teacher_steps": args.teacher_steps,
        "guidance_scale": args.guidance_scale,
        "sigma": args.sigma,
        "k": args.k,
    }
    try:
        base = kind.defaults_for(family)
        if args.preset in TRAINED_PRESETS:  # the settings the world was trained and tuned for
            from export.world.preset import shapes_defaults

            d = shapes_defaults()
            base = {**base, "student_steps": d.student_steps, "teacher_steps": d.teacher_steps, "guidance_scale": d.guidance_scale, "sigma": d.sigma}
        return GenerationSettings(**{**base, **{k: v for k, v in given.items() if v is not None}})
    except SettingsError as err:
        raise UsageError(f"--{err.field.replace('_', '-')}: {str(err).split(': ', 1)[-1]}") from None


def _calibration_prompts(args: argparse.Namespace) -> list[str] | None:
    from bll_python.prompts import read_prompts

    count = args.calibration_count
    if count is None and args.preset:
        count = PRESET_CALIBRATION_PROMPTS
    if count is not None and count < 0:
        raise UsageError(f"--calibration-count: got {count}; expected 0 or more")
    if count == 0:
        return None
    from export.checkpoints.presets import TRAINED_PRESETS

    if args.preset in TRAINED_PRESETS and not args.calibration_prompts and args.calibration_count is None:
        from export.world.preset import calibration_prompts

        return calibration_prompts()  # the world's own calibration file, never trained on
    path = Path(args.calibration_prompts) if args.calibration_prompts else CALIBRATION_PROMPTS
    if not path.is_file():
        raise SourceError(f"--calibration-prompts: {path} does not exist")
    prompts = read_prompts(path)
    if not prompts:
        raise SourceError(f"--calibration-prompts: {path} holds no prompts")
    return prompts[:count] if count is not None else prompts


def _real_sources(args: argparse.Namespace, kind: StudentKind, overrides: dict[str, float]):
    from export.checkpoints.hub import FULL_STUDENT_FILES, REFINER_FILES, REWARD_FILE, TEACHER_FILES, resolve_source
    from export.checkpoints.lora import LORA_FILE
    from export.checkpoints.sources import Sources

    teacher = resolve_source(args.teacher, "--teacher", patterns=TEACHER_FILES)
    if kind.is_lora:
        student = resolve_source(args.student, "--student", file=LORA_FILE)
    else:
        student = resolve_source(args.student, "--student", patterns=FULL_STUDENT_FILES)
    reward = resolve_source(args.reward, "--reward", file=REWARD_FILE)
    reward_config = None
    if args.reward_config:
        reward_config = Path(args.reward_config).expanduser()
        if not reward_config.is_file():
            raise SourceError(f"--reward-config: {reward_config} does not exist")
    refiner = resolve_source(args.refiner, "--refiner", patterns=REFINER_FILES) if args.refiner else None
    return Sources(
        teacher=teacher,
        student=student,
        student_kind=kind.name,
        reward=reward,
        reward_config=reward_config,
        sampler_overrides=overrides,
        refiner=refiner,
        refiner_max_sigma=args.refiner_max_sigma,
        teacher_sampler=args.teacher_sampler,
    )


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
    from export.checkpoints.samplers import describe

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
        f"  teacher       {describe(dep.teacher_scheduler)}",
        *([f"  refiner       unet_refiner for refine rows with sigma <= {dep.refiner_max_sigma:g}: {describe(dep.refiner_scheduler)}"] if dep.refiner_scheduler else []),
        f"  defaults      student_steps={d.student_steps} teacher_steps={d.teacher_steps} guidance_scale={d.guidance_scale:g} sigma={d.sigma:g} strategy={d.strategy.value}",
    ]
    if dep.calibration is not None:
        k = d.k if d.k is not None else dep.default_k
        lines.append(f"  default tau   {dep.calibration.tau(k):.4f} (k={k:g}, from {dep.calibration.prompts} prompts)")
    else:
        lines.append("  default tau   none (no calibration): requests must pass tau")
    total = sum(summary.sizes.values())
    lines.append(f"  total         {total / 2**20:.2f} MiB in {len(summary.sizes)} ONNX models")
    lines.append(f"serve it:  python -m export.launcher --repository {out}")
    return "\n".join(lines)


def _kinds_table() -> str:
    rows = []
    for kind in STUDENT_KINDS.values():
        rows.append(f"{kind.name:<9} {kind.description}\n          defaults {kind.defaults}; source: {kind.source}")
    rows.append("\nteacher samplers (--teacher-sampler):")
    for sampler in TEACHER_SAMPLERS.values():
        rows.append(f"{sampler.name:<9} {sampler.cls}: {sampler.description}; source: {sampler.source}")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    if args.list_kinds:
        print(_kinds_table())
        return 0
    from export.checkpoints.presets import preset_student_kind

    kind = student_kind(args.student_kind or (preset_student_kind(args.preset) if args.preset else "cd"))
    if args.preset is not None:
        if args.preset not in PRESET_NAMES:
            raise UsageError(f"--preset {args.preset!r} is not a preset; choose one of {list(PRESET_NAMES)}")
        given = [f"--{f.replace('_', '-')}" for f in ("teacher", "student", "reward", "reward_config") if getattr(args, f)]
        if args.refiner not in (None, PRESET_REFINER):
            given.append(f"--refiner {args.refiner} (with --preset, --refiner {PRESET_REFINER} writes the preset's refiner)")
        if given:
            raise UsageError(f"--preset writes its own random-weight checkpoints; drop {', '.join(given)}")
        if args.refiner == PRESET_REFINER:
            from export.checkpoints.presets import preset_family

            if preset_family(args.preset) != "sdxl":
                raise UsageError(f"--refiner: the {args.preset} preset is {preset_family(args.preset)}; only an SDXL preset (tiny-xl) has a refiner")
    else:
        missing = [f"--{f.replace('_', '-')}" for f in ("teacher", "student", "student_kind", "reward") if not getattr(args, f)]
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (or use --preset tiny|small|tiny-xl|shapes)")
    if args.max_rows is not None and args.max_rows < 1:
        raise UsageError(f"--max-rows: got {args.max_rows}; expected 1 or more")
    overrides = check_sampler_overrides(kind, {"eta": args.eta} if args.eta is not None else {})
    if args.teacher_sampler is not None:
        teacher_sampler(args.teacher_sampler)
    defaults = _defaults(kind, args)
    prompts = _calibration_prompts(args)

    from export.build import checkpoint_dir, export_repository

    name = args.name or ((args.preset if kind.name == preset_student_kind(args.preset) else f"{args.preset}-{kind.name}") if args.preset else kind.name)
    if not args.name and args.teacher_sampler not in (None, DEFAULT_TEACHER_SAMPLER):
        name = f"{name}-{args.teacher_sampler}"  # another teacher is another export
    out = Path(args.out).expanduser() if args.out else Path(DEFAULT_ROOT) / name / "repository"
    if _prepare_out(out, args.force) and not args.force:
        if args.preset:
            print(f"{out} already holds the {name} export (pass --force to export it again)")
            return 0
        raise SourceError(f"--out {out} already holds an export; pass --force to replace it")
    progress = not args.quiet
    start = time.perf_counter()
    with _quiet_libraries(not args.verbose):
        if args.preset:
            from export.checkpoints.presets import TRAINED_PRESETS, preset_sources

            if progress:
                what = "trained checkpoints" if args.preset in TRAINED_PRESETS else "random-weight checkpoints"
                print(f"writing the {args.preset} preset's {what} ({kind.name} student) ...", file=sys.stderr)
            sources = preset_sources(args.preset, checkpoint_dir(out), kind.name, refiner=args.refiner == PRESET_REFINER, refiner_max_sigma=args.refiner_max_sigma)
            sources.sampler_overrides = overrides
            sources.teacher_sampler = args.teacher_sampler
        else:
            sources = _real_sources(args, kind, overrides)
        from export.checkpoints.sources import teacher_family

        defaults = _defaults(kind, args, teacher_family(Path(sources.teacher)).name)
        if progress:
            what = "fusing the student LoRA into a copy of the teacher UNet" if kind.is_lora else "loading the student UNet"
            print(f"loading the teacher, {what}, loading ImageReward ...", file=sys.stderr)
        summary = export_repository(
            sources,
            out,
            preset=args.preset or name,
            max_rows=args.max_rows or DEFAULT_MAX_ROWS,
            defaults=defaults,
            calibration_prompts=prompts,
            progress=progress,
            image_sizes=tuple(args.image_sizes) if args.image_sizes else None,
        )
    summary.seconds = time.perf_counter() - start
    print(_report(summary, out))
    return 0


def _input_error(err: Exception) -> bool:
    """Whether ``err`` is about the user's input (one line, status 2) rather than a bug (traceback)."""
    from bll_python.settings import SettingsError

    input_errors: tuple[type[Exception], ...] = (UsageError, SourceError, SettingsError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
    # Imported only if already loaded: importing it pulls in transformers, too slow for a typo.
    reward = sys.modules.get("export.models.image_reward_keys")
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
