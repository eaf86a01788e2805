"""How far the judge can be trusted: its verdicts on renders whose truth is known.

For each held-out caption and each degradation, two images: a render of the caption (faithful: every
check should pass) and a render of the caption with one attribute changed (unfaithful: the judge,
asked about the original caption, should fail it). Reported per degradation:

- ``faithful_correct``: share of faithful renders the judge passes entirely;
- ``check_accuracy``: share of individual checks on faithful renders that pass;
- ``unfaithful_caught``: share of unfaithful renders the judge fails;
- ``accuracy``: the mean of ``faithful_correct`` and ``unfaithful_caught`` (a balanced verdict accuracy).

An optional VAE round trip (encode, decode) is one more "degradation": whether the world's
latent space keeps shapes distinguishable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from export.world.degrade import degradations, perturb
from export.world.grammar import Caption
from export.world.judge import judge_caption
from export.world.render import render_caption


@dataclass
class JudgeAccuracy:
    degradation: str
    captions: int
    faithful_correct: float
    check_accuracy: float
    unfaithful_caught: float

    @property
    def accuracy(self) -> float:
        return (self.faithful_correct + self.unfaithful_caught) / 2

    def as_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "accuracy": self.accuracy}


def validate_judge(
    captions: Sequence[Caption],
    seed: int = 0,
    extra: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
) -> list[JudgeAccuracy]:
    """The judge's accuracy on faithful and unfaithful renders of ``captions`` under each degradation."""
    rng = np.random.default_rng(seed)
    faithful = [render_caption(c, rng) for c in captions]
    wrong = [render_caption(perturb(c, rng)[0], rng) for c in captions]
    results = []
    for name, degrade in {**degradations(np.random.default_rng(seed + 1)), **(extra or {})}.items():
        good = [judge_caption(degrade(im), c) for im, c in zip(faithful, captions)]
        bad = [judge_caption(degrade(im), c) for im, c in zip(wrong, captions)]
        checks = [ok for v in good for ok in v.checks.values()]
        results.append(
            JudgeAccuracy(
                degradation=name,
                captions=len(captions),
                faithful_correct=float(np.mean([v.correct for v in good])),
                check_accuracy=float(np.mean(checks)),
                unfaithful_caught=float(np.mean([not v.correct for v in bad])),
            )
        )
    return results


def vae_round_trip(vae_folder) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 image -> the same image encoded and decoded by the VAE (the posterior mode)."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_folder).eval()

    def apply(image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(127.5).sub(1)
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample
        return ((y[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).byte().numpy()

    return apply


def format_table(results: Sequence[JudgeAccuracy]) -> str:
    lines = ["| degradation | faithful judged correct | checks passed (faithful) | unfaithful caught | accuracy |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.degradation} | {r.faithful_correct:.1%} | {r.check_accuracy:.1%} | {r.unfaithful_caught:.1%} | {r.accuracy:.1%} |")
    return "\n".join(lines)
