"""The paper's tables in miniature, on the trained ``shapes`` world, served through Triton.

    python -m benchmarks.miniature                       # 204 held-out prompts, all modes (~15 min on 2 busy cores)
    python -m benchmarks.miniature --count 48 --teacher-sweep 5 20

Modes: the teacher alone at several step counts, the student alone, and adaptive refine and
regenerate at k = 30 / 50 / 70 (tau from the repository's calibration). Per mode: mean judge
fidelity (the stand-in for human preference), share of images fully correct, mean ImageReward of
the final image, mean UNet steps, share sent to the teacher, served images/s and server CPU per
image. Also: how often the student beats the teacher on the same prompt and seed (the paper's
~30 %), how well ImageReward agrees with the judge, and the fidelity-vs-steps plot (Figure 10).
Results: ``benchmarks/results/shapes/`` (miniature.json, miniature.csv, summary.md, fidelity_vs_steps.png).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from export.world.config import HELDOUT_FILE

    p = argparse.ArgumentParser(prog="python -m benchmarks.miniature", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, help="a shapes model repository (default: the shapes preset's, exported if missing)")
    p.add_argument("--prompts", type=Path, default=HELDOUT_FILE, help="prompt file (default: the held-out shapes prompts)")
    p.add_argument("--count", type=int, help="first N prompts (default: all)")
    p.add_argument("--teacher-sweep", nargs="+", type=int, default=[5, 10, 20, 40], help="teacher_only step counts (default 5 10 20 40)")
    p.add_argument("--ks", nargs="+", type=int, default=[30, 50, 70], help="adaptive percentiles (default 30 50 70)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<label>)")
    return p.parse_args(argv)


def markdown(rows, h2h, agreements, settings: dict, machine: str) -> str:
    lines = [
        f"Machine: {machine}. Serving defaults: {settings}.",
        "",
        "| mode | judge fidelity | all correct | ImageReward | avg UNet steps | to teacher | images/s | server CPU ms/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = f"{r.server_cpu_ms_per_image:.0f}" if r.server_cpu_ms_per_image is not None else "-"
        lines.append(
            f"| {r.mode} | {r.judge_fidelity:.3f} +- {r.judge_fidelity_stderr:.3f} | {r.all_correct:.1%} | {r.image_reward:+.3f} | {r.mean_unet_steps:.1f} | {r.teacher_share:.0%} | {r.images_per_s:.2f} | {cpu} |"
        )
    families = list(rows[0].fidelity_by_family)
    lines += ["", "Judge fidelity by prompt family:", "", "| mode | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for r in rows:
        lines.append(f"| {r.mode} | " + " | ".join(f"{r.fidelity_by_family[f]:.3f}" for f in families) + " |")
    if h2h:
        lines += [
            "",
            f"Student vs teacher, same prompt and seed ({h2h.prompts} prompts): student better {h2h.student_wins:.1%}, tie {h2h.ties:.1%}, "
            f"teacher better {h2h.teacher_wins:.1%} (judge); student scores higher by ImageReward {h2h.student_wins_by_reward:.1%}.",
        ]
    lines += ["", "| ImageReward vs judge | images | Spearman | Pearson | pairwise agreement |", "|---|---|---|---|---|"]
    for a in agreements:
        lines.append(f"| {a.population} | {a.images} | {a.spearman:+.3f} | {a.pearson:+.3f} | {a.pairwise_agreement:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from benchmarks.cpu import tree_cpu_seconds
    from benchmarks.fidelity import agreement, head_to_head, miniature_modes, run_mode, summarize
    from benchmarks.fidelity_plot import fidelity_plot
    from benchmarks.machine import describe, machine_info
    from benchmarks.report import write_csv
    from benchmarks.workload import read_prompts
    from bll_python.inprocess import inprocess_pipeline
    from export.build import repository_or_preset
    from export.world.grammar import parse
    from export.world.judge import judge
    from clients.server_process import ServerProcess

    repository, label = repository_or_preset(args.repository, "shapes")
    prompts = read_prompts(args.prompts)
    prompts = prompts[: args.count] if args.count else prompts
    scorer = inprocess_pipeline(repository)  # the served ImageReward graph, to score final images
    defaults = scorer.deployment.defaults

    def reward(images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(images), 8):
            batch = torch.from_numpy(np.stack(images[i : i + 8])).permute(0, 3, 1, 2).float() / 255.0
            tokens = scorer.tokenizers(texts[i : i + 8])
            out.append(scorer.run(scorer.score(batch, tokens.reward_ids, tokens.reward_mask)).cpu().numpy())
        return np.concatenate(out)

    machine = machine_info()
    modes = miniature_modes(defaults.teacher_steps, args.teacher_sweep, args.ks)
    results = []
    out = args.out or RESULTS / label
    out.mkdir(parents=True, exist_ok=True)
    with ServerProcess(repository, log=out / "server.log") as server:
        for mode in modes:
            result = run_mode(
                mode, server.grpc_url, prompts, concurrency=args.concurrency, judge=judge, reward=reward, family=lambda p: parse(p).family, cpu_seconds=lambda: tree_cpu_seconds(server.pid)
            )
            results.append(result)
            row = summarize(result)
            print(f"{row.mode:<16} fidelity {row.judge_fidelity:.3f}  correct {row.all_correct:6.1%}  IR {row.image_reward:+.3f}  steps {row.mean_unet_steps:5.1f}  {row.images_per_s:5.2f} img/s", flush=True)
    rows = [summarize(r) for r in results]
    by_name = {r.mode.name: r for r in results}
    student, teacher = by_name.get("student"), by_name.get(f"teacher_{defaults.teacher_steps}")
    h2h = head_to_head(student, teacher) if student and teacher else None
    agreements = []
    if student:
        agreements.append(agreement("student samples (what the gate ranks)", student.reward, student.fidelity))
    agreements.append(agreement("all final images, all modes", np.concatenate([r.reward for r in results]), np.concatenate([r.fidelity for r in results])))

    settings = defaults.as_dict()
    write_csv(out / "miniature.csv", [r.as_dict() for r in rows])
    summary = {
        "machine": machine,
        "prompts_file": str(args.prompts.name),
        "prompts": len(prompts),
        "serving_defaults": settings,
        "concurrency": args.concurrency,
        "rows": [r.as_dict() for r in rows],
        "student_vs_teacher": h2h.as_dict() if h2h else None,
        "reward_vs_judge": [a.as_dict() for a in agreements],
    }
    (out / "miniature.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(rows, h2h, agreements, settings, describe(machine))
    (out / "summary.md").write_text(text)
    fidelity_plot(rows, out / "fidelity_vs_steps.png", f"{label}: {len(prompts)} held-out prompts, served (Triton), seeds 0..{len(prompts) - 1}")
    print("\n" + text)
    print(f"wrote {out}/miniature.json, miniature.csv, summary.md, fidelity_vs_steps.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
