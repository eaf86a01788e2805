"""Calibrate the gate: tau for every percentile k, stored in the repository's deployment manifest.

    python -m benchmarks.calibrate --preset small                 # 600 held-out prompts, keep default k
    python -m benchmarks.calibrate --preset tiny --k 60           # ... and serve k=60 by default
    python -m benchmarks.calibrate --preset tiny --budget 12      # the k whose mean UNet steps is 12
    python -m benchmarks.calibrate --preset tiny --budget 12 --set-only   # reuse the stored scores

Student samples are generated with exactly the serving settings (the manifest's defaults: guidance,
steps, sampler; the served ONNX graphs and session options) and scored by ImageReward. All
percentiles k = 0..100 are stored, so any request's k maps to a tau without recalibrating. The
stability of tau with 150 / 250 / 500 prompts (mean and std over random subsets, as in the
supplement's Table 2) goes to benchmarks/results/<preset>/. A running server reads the manifest when
it loads the model: restart it (or reload adaptive_diffusion) to serve the new tau.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from benchmarks.budget import BudgetError, average_steps, k_for_budget
from benchmarks.workload import HELDOUT_PROMPTS
from bll_python.prompts import read_prompts

if TYPE_CHECKING:
    from benchmarks.stability import StabilityRow
    from bll_python.deployment import Calibration, Deployment

RESULTS = Path(__file__).resolve().parent / "results"
STABILITY_SIZES = (150, 250, 500)
STABILITY_KS = (30.0, 50.0, 70.0)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--preset", default="tiny", help="preset whose repository is built/reused (default tiny)")
    where.add_argument("--repository", type=Path, help="model repository to calibrate")
    p.add_argument("--prompts", type=Path, default=HELDOUT_PROMPTS, help="held-out prompt file (default benchmarks/prompts/heldout.txt)")
    p.add_argument("--count", type=int, help="use the first N prompts (default: all)")
    p.add_argument("--batch", type=int, help="rows per pipeline call (default: the deployment's max_rows)")
    choose = p.add_mutually_exclusive_group()
    choose.add_argument("--k", type=float, help="set the server's default percentile k (0..100)")
    choose.add_argument("--budget", type=float, metavar="STEPS", help="set k so the mean UNet steps per image is STEPS")
    p.add_argument("--set-only", action="store_true", help="keep the stored calibration, only set the default k")
    p.add_argument("--no-store", action="store_true", help="report only; leave the manifest untouched")
    p.add_argument("--stability", type=int, nargs="*", default=list(STABILITY_SIZES), help="subset sizes for the stability table (default 150 250 500)")
    p.add_argument("--subsets", type=int, default=5, help="random subsets per size (default 5)")
    p.add_argument("--out", type=Path, help="results directory (default benchmarks/results/<preset>)")
    return p.parse_args(argv)


def resolve_k(args: argparse.Namespace, student_steps: int, teacher_steps: int) -> float | None:
    if args.budget is not None:
        return k_for_budget(args.budget, student_steps, teacher_steps)
    if args.k is not None:
        if not 0.0 <= args.k <= 100.0:
            raise BudgetError(f"--k must be in [0, 100], got {args.k:g}")
        return args.k
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from bll_python.deployment import Deployment
    from bll_python.layout import assets_dir

    from export.build import repository_or_preset

    repository, label = repository_or_preset(args.repository, args.preset)
    deployment = Deployment.load(assets_dir(repository))
    d = deployment.defaults
    try:
        k = resolve_k(args, d.student_steps, d.teacher_steps)
    except BudgetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if k is not None:
        print(f"k = {k:g}: a share {k / 100:.2f} of images reaches the teacher, mean UNet steps {d.student_steps} + {k / 100:.2f} x {d.teacher_steps} = {average_steps(k, d.student_steps, d.teacher_steps):g}")

    if args.set_only:
        if deployment.calibration is None:
            print("error: --set-only needs a stored calibration; run without it first", file=sys.stderr)
            return 2
        if k is None:
            print("error: --set-only needs --k or --budget", file=sys.stderr)
            return 2
        deployment.default_k = k
        if not args.no_store:
            deployment.save(assets_dir(repository))
        print(f"default k = {k:g} -> tau = {deployment.calibration.tau(k):.4f} ({'not stored' if args.no_store else assets_dir(repository)})")
        return 0

    calibration, stability = calibrate(repository, deployment, args, label)
    deployment.calibration = calibration
    if k is not None:
        deployment.default_k = k
    if not args.no_store:
        path = deployment.save(assets_dir(repository))
        print(f"stored {calibration.prompts}-prompt calibration and default k = {deployment.default_k:g} in {path}; restart the server to serve it")
    print(f"default k = {deployment.default_k:g} -> tau = {calibration.tau(deployment.default_k):.4f}")
    return 0


def calibrate(repository: Path, deployment: "Deployment", args: argparse.Namespace, label: str) -> tuple["Calibration", list["StabilityRow"]]:
    from benchmarks.report import write_csv
    from benchmarks.stability import stability_plot, tau_stability
    from bll_python.calibration import calibrate as calibrate_pipeline
    from bll_python.inprocess import inprocess_pipeline

    prompts = read_prompts(args.prompts)
    if args.count:
        prompts = prompts[: args.count]
    pipe = inprocess_pipeline(repository)
    batch = args.batch or deployment.max_rows

    def progress(done: int, total: int) -> None:
        if sys.stdout.isatty() or done == total:
            print(f"\r  scored {done}/{total} student samples", end="" if done < total else "\n", flush=True)

    calibration, samples = calibrate_pipeline(pipe, prompts, batch=batch, progress=progress)
    p = calibration.percentiles
    print(f"{len(prompts)} prompts in {samples.seconds:.1f} s ({samples.seconds_per_sample * 1000:.0f} ms a sample); tau at k=30/50/70: {p[30]:.4f} / {p[50]:.4f} / {p[70]:.4f}")

    out = args.out or RESULTS / label
    out.mkdir(parents=True, exist_ok=True)
    sizes = [n for n in args.stability if n <= len(prompts)]
    rows = tau_stability(samples.scores, sizes, STABILITY_KS, subsets=args.subsets, seconds_per_sample=samples.seconds_per_sample) if sizes else []
    summary = {
        "repository": str(repository),
        "prompts_file": str(args.prompts),
        "prompts": len(prompts),
        "settings": calibration.settings,
        "seconds": samples.seconds,
        "seconds_per_sample": samples.seconds_per_sample,
        "percentiles": calibration.percentiles,
        "stability": [r.as_dict() for r in rows],
        "note": "random-weight presets: the scores only exercise the plumbing" if deployment.preset in ("tiny", "small") else "",
    }
    (out / "calibration.json").write_text(json.dumps(summary, indent=2))
    write_csv(out / "calibration_scores.csv", [{"prompt_index": i, "seed": i, "score": float(s)} for i, s in enumerate(samples.scores)])
    if rows:
        write_csv(out / "tau_stability.csv", [r.as_dict() for r in rows])
        stability_plot(rows, out / "tau_stability.png", f"{label}: tau vs calibration prompts (pool {len(prompts)}, {args.subsets} subsets)")
        print("tau stability (mean +- std over random subsets):")
        for n in sizes:
            cells = "  ".join(f"k={r.k:g}: {r.tau_mean:+.4f} +- {r.tau_std:.4f}" for r in rows if r.prompts == n)
            t = next(r.seconds_to_generate for r in rows if r.prompts == n)
            print(f"  {n:4d} prompts ({t:6.1f} s)  {cells}")
    skipped = [n for n in args.stability if n > len(prompts)]
    if skipped:
        print(f"  (no stability rows for {skipped}: only {len(prompts)} prompts)")
    print(f"wrote {out}/calibration.json, calibration_scores.csv" + (", tau_stability.csv/.png" if rows else ""))
    return calibration, rows


if __name__ == "__main__":
    sys.exit(main())
