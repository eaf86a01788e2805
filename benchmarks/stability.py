"""How tau moves with the number of calibration prompts (the supplement's Table 2).

Random subsets of n scored prompts give a tau each; the mean and standard deviation over subsets
show how many prompts the threshold needs. Subsets are drawn from one pool, so for n close to the
pool size they overlap and the spread is a lower bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.figures import save_figure


@dataclass
class StabilityRow:
    prompts: int
    k: float
    tau_mean: float
    tau_std: float
    subsets: int
    pool: int
    seconds_to_generate: float  # n x the measured time per sample

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tau_stability(
    scores: np.ndarray,
    sizes: Sequence[int],
    ks: Sequence[float],
    *,
    subsets: int = 5,
    seconds_per_sample: float = 0.0,
    seed: int = 0,
) -> list[StabilityRow]:
    rng = np.random.default_rng(seed)
    pool = len(scores)
    rows = []
    for n in sizes:
        if n > pool:
            raise ValueError(f"a subset of {n} prompts needs at least {n} scored prompts, have {pool}")
        draws = [scores[rng.choice(pool, size=n, replace=False)] for _ in range(subsets)]
        for k in ks:
            taus = np.array([np.percentile(d, k) for d in draws])
            rows.append(StabilityRow(n, float(k), float(taus.mean()), float(taus.std(ddof=1)) if subsets > 1 else 0.0, subsets, pool, n * seconds_per_sample))
    return rows


def stability_plot(rows: Sequence[StabilityRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in sorted({r.k for r in rows}):
        sel = [r for r in rows if r.k == k]
        ax.errorbar([r.prompts for r in sel], [r.tau_mean for r in sel], yerr=[r.tau_std for r in sel], marker="o", capsize=3, label=f"k={k:g}")
    ax.set_xlabel("calibration prompts")
    ax.set_ylabel("tau (ImageReward), mean +- std over subsets")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)
