"""The paper's Figure 10 in miniature: quality against average UNet steps, one curve per strategy."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.fidelity import ModeRow  # noqa: E402
from benchmarks.figures import save_figure  # noqa: E402

STYLE = {"teacher": ("v-", "teacher alone (DPM-Solver++)"), "refine": ("o-", "adaptive refine"), "regenerate": ("s--", "adaptive regenerate"), "student": ("^", "student alone")}


def fidelity_plot(rows: Sequence[ModeRow], path: Path, title: str) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in ((axes[0], "judge_fidelity", "mean judge fidelity"), (axes[1], "image_reward", "mean ImageReward")):
        for curve, (fmt, name) in STYLE.items():
            sel = sorted((r for r in rows if r.curve == curve), key=lambda r: r.mean_unet_steps)
            if not sel:
                continue
            yerr = [r.judge_fidelity_stderr for r in sel] if metric == "judge_fidelity" else None
            ax.errorbar([r.mean_unet_steps for r in sel], [getattr(r, metric) for r in sel], yerr=yerr, fmt=fmt, ms=7, capsize=3, label=name)
            for r in sel:
                tag = r.mode.split("_")[-1] if curve != "student" else ""
                ax.annotate(tag, (r.mean_unet_steps, getattr(r, metric)), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set_xlabel("average UNet steps per image")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
