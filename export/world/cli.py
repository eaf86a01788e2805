"""``python -m export.world``: train the shapes world, write its prompt files, validate its judge.

    python -m export.world train                    # every stage not yet done (resumes a stopped one)
    python -m export.world train --stage teacher --restart
    python -m export.world prompts                  # benchmarks/prompts/shapes_{heldout,calibration}.txt
    python -m export.world judge                    # the judge's accuracy on clean and degraded renders
    python -m export.world export [--force]         # the shapes preset's model repository (artifacts/shapes/)
    python -m export.world evaluate --guidance 2 4 6 # judge fidelity per setting, on calibration prompts
    python -m export.world report                   # components' sizes and each stage's wall / CPU time (Markdown)

Stages and their outputs: vae -> latents -> teacher -> student -> pairs -> reward; the weights go to
``export/world/checkpoints/`` (``--out``), working state to ``artifacts/world/work/`` (``--work``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from export.world.config import CALIBRATION_FILE, CHECKPOINTS_DIR, HELDOUT_FILE, WORK_DIR, WorldConfig


def write_prompt_files(heldout: Path = HELDOUT_FILE, calibration: Path = CALIBRATION_FILE) -> tuple[Path, Path]:
    from export.world.grammar import prompt_file_text, splits

    s = splits()
    heldout.write_text(prompt_file_text(s.heldout, f"{len(s.heldout)} held-out shapes prompts: never trained on; the benchmark's test set (python -m export.world prompts)"))
    calibration.write_text(prompt_file_text(s.calibration, f"{len(s.calibration)} shapes prompts for tau calibration: never trained on, disjoint from the held-out set (python -m export.world prompts)"))
    return heldout, calibration


def _train(args: argparse.Namespace) -> int:
    from export.world.stages import run_stages

    cfg = WorldConfig.smoke() if args.smoke else WorldConfig()
    report = run_stages(cfg, args.work, args.out, only=args.stage, restart=args.restart, show=not args.quiet, threads=args.threads)
    if args.out.resolve() == CHECKPOINTS_DIR.resolve():
        import shutil

        from export.build import preset_repository
        from export.defaults import DEFAULT_ROOT

        # The preset's exported repository holds the old weights; the next use exports the new ones.
        shutil.rmtree(preset_repository("shapes", DEFAULT_ROOT), ignore_errors=True)
    print(f"stages done: {list(report['stages'])}; wall {report['total_wall_s']:.0f} s, CPU {report['total_cpu_s']:.0f} s; report in {args.out / 'training_report.json'}")
    return 0


def _judge(args: argparse.Namespace) -> int:
    from export.world.grammar import splits
    from export.world.judge_validation import format_table, validate_judge, vae_round_trip

    extra = {}
    vae = args.out / "teacher" / "vae"
    if (vae / "config.json").is_file():
        extra["VAE round trip"] = vae_round_trip(vae)
    results = validate_judge(splits().heldout, extra=extra)
    print(format_table(results))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
        print(f"wrote {args.save}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from bll_python.prompts import read_prompts
    from export.world.evaluate import evaluate, format_table
    from export.world.training import configure_torch

    configure_torch(args.threads)
    prompts = read_prompts(CALIBRATION_FILE)[: args.count]
    print(format_table(evaluate(args.out, prompts, args.guidance, args.teacher_steps, args.student_steps)))
    return 0


def _export(args: argparse.Namespace) -> int:
    import shutil

    from export.build import ensure_repository, preset_repository
    from export.defaults import DEFAULT_ROOT

    if args.force:
        shutil.rmtree(preset_repository("shapes", DEFAULT_ROOT), ignore_errors=True)
    print(ensure_repository("shapes"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.world", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run the training stages (resumable)")
    train.add_argument("--stage", nargs="+", help="only these stages (default: all, in order)")
    train.add_argument("--restart", action="store_true", help="train the chosen stages from scratch, ignoring snapshots and done markers")
    train.add_argument("--threads", type=int, default=2, help="torch threads (default 2; on a busy machine 1 wastes less CPU)")
    train.add_argument("--smoke", action="store_true", help="tiny models, a few steps per stage (proves the code runs)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    judge = sub.add_parser("judge", help="the judge's accuracy on faithful and unfaithful renders, clean and degraded")
    judge.add_argument("--save", type=Path, help="also write the results as JSON")
    sub.add_parser("prompts", help="write the held-out and calibration prompt files")
    rep = sub.add_parser("report", help="the components' sizes and each training stage's wall and CPU time, as Markdown")
    ev = sub.add_parser("evaluate", help="judge fidelity of teacher / student samples over a grid of settings (calibration prompts)")
    ev.add_argument("--guidance", nargs="+", type=float, default=[4.0])
    ev.add_argument("--teacher-steps", nargs="+", type=int, default=[20])
    ev.add_argument("--student-steps", nargs="+", type=int, default=[2])
    ev.add_argument("--count", type=int, default=96, help="first N calibration prompts (default 96)")
    ev.add_argument("--threads", type=int, default=2)
    export = sub.add_parser("export", help="export the committed checkpoints as the shapes preset's model repository")
    export.add_argument("--force", action="store_true", help="export again even if the repository exists")
    for sp in (train, judge, ev, rep):
        sp.add_argument("--out", type=Path, default=CHECKPOINTS_DIR, help=f"checkpoints (default {CHECKPOINTS_DIR})")
        sp.add_argument("--work", type=Path, default=WORK_DIR, help=f"working state (default {WORK_DIR})")
    args = p.parse_args(argv)
    if args.command == "train":
        return _train(args)
    if args.command == "judge":
        return _judge(args)
    if args.command == "export":
        return _export(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "report":
        from export.world.report import markdown

        print(markdown(args.out))
        return 0
    for path in write_prompt_files():
        print(f"wrote {path}")
    return 0
