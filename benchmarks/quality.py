"""Quality versus cost per mode, as in the paper's Figure 10: mean ImageReward of the final images
against the mean UNet steps per image, on a prompt file.

    python -m benchmarks.quality --preset tiny                  # 64 test prompts, all modes
    python -m benchmarks.quality --preset small --count 16 --modes student_only teacher_only refine_k50

Runs in-process on the served ONNX graphs (same images as the server, within 1 LSB). The final image
of a row the teacher fixed is scored again; the ``score`` output is the gate's input (the student
sample's score), not this. On the random-weight presets the numbers only prove the plumbing: the
"ImageReward" model is untrained and the teacher is no better than the student.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.figures import save_figure
from benchmarks.modes import BY_NAME, Mode, select_modes
from benchmarks.workload import TEST_PROMPTS
from bll_python.prompts import read_prompts
from bll_python.pipeline import AdaptivePipeline

RESULTS = Path(__file__).resolve().parent / "results"
RANDOM_WEIGHTS_NOTE = "random-weight preset: ImageReward is untrained, so these numbers only prove the plumbing, not the method"


@dataclass
class QualityRow:
    mode: str
    strategy: str
    k: float | None
    prompts: int
    mean_image_reward: float
    stderr_image_reward: float
    mean_unet_steps: float
    teacher_share: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def final_image_rewards(pipe: AdaptivePipeline, mode: Mode, prompts: Sequence[str], batch: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(ImageReward of each final image, UNet steps of each, rows that reached the teacher); seed = prompt index."""
    settings = mode.settings(pipe.deployment.defaults)
    rewards, steps, teacher = [], [], 0
    for i in range(0, len(prompts), batch):
        chunk = list(prompts[i : i + batch])
        result = pipe(chunk, seeds=list(range(i, i + len(chunk))), settings=settings)
        if result.teacher_rows and mode.strategy.uses_student:
            tokens = pipe.tokenizers(chunk)
            scores = pipe.run(pipe.score(result.images_float, tokens.reward_ids, tokens.reward_mask)).cpu().numpy()
        else:
            scores = result.scores  # the final image is the one the gate (or teacher_only) scored
        rewards.append(np.asarray(scores, dtype=np.float64))
        steps.append(result.unet_steps.astype(np.float64))
        teacher += len(result.teacher_rows)
    return np.concatenate(rewards), np.concatenate(steps), teacher

def evaluate(pipe: AdaptivePipeline, modes: Sequence[Mode], prompts: Sequence[str], batch: int) -> list[QualityRow]:
    import time

    rows = []
    for mode in modes:
        start = time.perf_counter()
        rewards, steps, teacher = final_image_rewards(pipe, mode, prompts, batch)
        rows.append(
            QualityRow(
                mode=mode.name,
                strategy=mode.strategy.value,
                k=mode.k,
                prompts=len(prompts),
                mean_image_reward=float(rewards.mean()),
                stderr_image_reward=float(rewards.std(ddof=1) / np.sqrt(len(rewards))) if len(rewards) > 1 else 0.0,
                mean_unet_steps=float(steps.mean()),
                teacher_share=teacher / len(prompts),
                seconds=time.perf_counter() - start,
            )
        )
    return rows

def quality_plot(rows: Sequence[QualityRow], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for strategy, marker in (("refine", "o-"), ("regenerate", "s--")):
        sel = sorted((r for r in rows if r.strategy == strategy), key=lambda r: r.mean_unet_steps)
        if sel:
            ax.errorbar([r.mean_unet_steps for r in sel], [r.mean_image_reward for r in sel], yerr=[r.stderr_image_reward for r in sel], fmt=marker, capsize=3, label=f"adaptive {strategy}")
            for r in sel:
                ax.annotate(f"k={r.k:g}", (r.mean_unet_steps, r.mean_image_reward), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for name, marker in (("student_only", "^"), ("teacher_only", "v")):
        for r in rows:
            if r.mode == name:
                ax.errorbar([r.mean_unet_steps], [r.mean_image_reward], yerr=[r.stderr_image_reward], fmt=marker, ms=9, capsize=3, label=name)
    ax.set_xlabel("mean UNet steps per image")
    ax.set_ylabel("mean ImageReward of final images")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)

def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--preset", default="tiny")
    where.add_argument("--repository", type=Path)
    p.add_argument("--prompts", type=Path, default=TEST_PROMPTS, help="prompt file (default benchmarks/prompts/test.txt)")
    p.add_argument("--count", type=int, help="first N prompts (default: all)")
    p.add_argument("--modes", nargs="+", choices=list(BY_NAME), help="default: all")
    p.add_argument("--batch", type=int, help="rows per pipeline call (default: the deployment's max_rows)")
    p.add_argument("--out", type=Path, help="results directory (default benchmarks/results/<preset>)")
    return p.parse_args(argv)

def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from bll_python.inprocess import inprocess_pipeline
    from benchmarks.report import write_csv

    from export.build import repository_or_preset

    repository, label = repository_or_preset(args.repository, args.preset)
    prompts = read_prompts(args.prompts)[: args.count] if args.count else read_prompts(args.prompts)
    pipe = inprocess_pipeline(repository)
    rows = evaluate(pipe, select_modes(args.modes), prompts, args.batch or pipe.deployment.max_rows)
    note = RANDOM_WEIGHTS_NOTE if pipe.deployment.preset in ("tiny", "small") else ""
    out = args.out or RESULTS / label
    write_csv(out / "quality.csv", [r.as_dict() for r in rows])
    (out / "quality.json").write_text(json.dumps({"prompts_file": str(args.prompts), "note": note, "rows": [r.as_dict() for r in rows]}, indent=2))
    quality_plot(rows, out / "quality_vs_steps.png", f"{label}: quality vs cost, {len(prompts)} prompts" + (" (random weights: plumbing only)" if note else ""))
    print(f"{'mode':<15} {'ImageReward':>18} {'steps':>6} {'teacher':>7}")
    for r in rows:
        print(f"{r.mode:<15} {r.mean_image_reward:+9.4f} +- {r.stderr_image_reward:.4f} {r.mean_unet_steps:6.2f} {r.teacher_share:7.0%}")
    if note:
        print(f"NOTE: {note}")
    print(f"wrote {out}/quality.csv, quality.json, quality_vs_steps.png")
    return 0

if __name__ == "__main__":
    sys.exit(main())
