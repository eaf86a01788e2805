"""``make bench``: perf_analyzer sweeps, the in-process limit and Triton's per-model times, per preset.

    python -m benchmarks.run                  # tiny and small, all modes, concurrency 1 2 4 8 (~15 min)
    python -m benchmarks.run --quick          # tiny, 3 modes, concurrency 1 and 4 (~1 min)
    python -m benchmarks.run --preset small --modes student_only teacher_only refine_k50

Results go to benchmarks/results/<preset>/ (JSON, CSV, PNG) and the summary tables to stdout and
benchmarks/results/<preset>/summary.txt.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from benchmarks.modes import BY_NAME, select_modes

RESULTS = Path(__file__).resolve().parent / "results"
# Requests per level: `entries` distinct prompts, each sent equally often, and at least `per_client`
# requests per concurrent client. On `small` (1-3 s an image on 2 cores) the k=30/70 modes are
# measured at the in-process levels only, so tiny + small finish in ~15 minutes on a busy machine.
CORE_MODES = ("student_only", "teacher_only", "refine_k50", "regenerate_k50")
PRESET_SIZES = {
    "tiny": dict(entries=16, per_client=4, full_sweep_modes=None),
    "small": dict(entries=8, per_client=1, full_sweep_modes=CORE_MODES),
}
QUICK = dict(presets=["tiny"], modes=["student_only", "teacher_only", "refine_k50"], concurrency=[1, 4], entries=4, per_client=2, limit_rows=8, head_of_line=4)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", dest="presets", action="append", help="preset to benchmark (repeatable; default: tiny and small)")
    p.add_argument("--repository", type=Path, help="benchmark this model repository as it is (configs untouched); results under its folder name")
    p.add_argument("--quick", action="store_true", help="a one-minute run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--modes", nargs="+", choices=list(BY_NAME), help="modes to sweep (default: all)")
    p.add_argument("--concurrency", nargs="+", type=int, help="perf_analyzer concurrency levels (default 1 2 4 8)")
    p.add_argument("--inprocess-concurrency", nargs="+", type=int, default=[1, 4], help="levels that also get an in-process run (default 1 4)")
    p.add_argument("--entries", type=int, help="distinct prompts per mode (default: per preset)")
    p.add_argument("--per-client", type=int, help="minimum requests per concurrent client (default: per preset)")
    p.add_argument("--full", action="store_true", help="every mode at every concurrency level, on every preset")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--limit-rows", type=int, help="images per machine-limit shape and mode (default 16; 0 skips the machine limit)")
    p.add_argument("--head-of-line", type=int, help="concurrency of the head-of-line run (default 8; 0 skips it)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results root (default benchmarks/results)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.presets = args.presets or QUICK["presets"]
        args.modes = args.modes or QUICK["modes"]
        args.concurrency = args.concurrency or QUICK["concurrency"]
        args.entries = args.entries or QUICK["entries"]
        args.per_client = args.per_client or QUICK["per_client"]
        args.limit_rows = QUICK["limit_rows"] if args.limit_rows is None else args.limit_rows
        args.head_of_line = QUICK["head_of_line"] if args.head_of_line is None else args.head_of_line
    args.presets = args.presets or ["tiny", "small"]
    args.concurrency = args.concurrency or [1, 2, 4, 8]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from benchmarks.plots import plot_all
    from benchmarks.report import save, summary
    from benchmarks.sweep import SweepConfig, run_preset

    summaries = []
    targets = [(args.repository.resolve().parent.name if args.repository.name == "repository" else args.repository.name, args.repository)] if args.repository else [(p, None) for p in args.presets]
    for label, repository in targets:
        sizes = PRESET_SIZES.get(label, PRESET_SIZES["small"])
        config = SweepConfig(
            preset=label,
            repository=repository,
            modes=select_modes(args.modes),
            concurrency=tuple(args.concurrency),
            inprocess_concurrency=tuple(args.inprocess_concurrency),
            entries=args.entries or sizes["entries"],
            per_client=args.per_client or sizes["per_client"],
            protocol=args.protocol,
            full_sweep_modes=None if args.full or args.modes else sizes["full_sweep_modes"],
            limit_rows=16 if args.limit_rows is None else args.limit_rows,
            head_of_line_concurrency=8 if args.head_of_line is None else args.head_of_line,
        )
        out_dir = args.out / label
        start = time.perf_counter()
        report = run_preset(config, out_dir, log=lambda line: print(line, flush=True))
        paths = save(report, out_dir)
        if not args.no_plots:
            paths += plot_all(report, out_dir)
        text = summary(report) + f"\n({time.perf_counter() - start:.0f} s)"
        (out_dir / "summary.txt").write_text(text + "\n")
        summaries.append(text)
        print(f"\n{text}\nwrote {', '.join(str(p.relative_to(args.out)) for p in paths)} under {args.out}\n", flush=True)
    if len(summaries) > 1:
        print("\n\n".join(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
