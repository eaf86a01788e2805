"""Judge fidelity and ImageReward of served images, per serving mode: the paper's tables in miniature.

A mode is a set of contract fields (strategy, k, teacher_steps, ...). Every mode generates the same
prompts with the same seeds (prompt i, seed i) through a running server. Each final image is then
judged (the stand-in for the paper's human raters) and scored again by the deployment's ImageReward,
in-process on the returned uint8 image (the served ``score`` is the student sample's, the gate's
input, not the final image's).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from clients.cli import generate_all
from clients.client import AdaptiveClient, Generation


@dataclass(frozen=True)
class FidelityMode:
    name: str
    curve: str  # which plotted curve it belongs to: teacher | student | refine | regenerate
    fields: dict[str, Any]


def miniature_modes(teacher_steps: int, teacher_sweep: Sequence[int], ks: Sequence[int]) -> list[FidelityMode]:
    """Teacher alone at several step counts, student alone, adaptive refine / regenerate at each k."""
    modes = [FidelityMode(f"teacher_{n}", "teacher", {"strategy": "teacher_only", "teacher_steps": n}) for n in teacher_sweep]
    if teacher_steps not in teacher_sweep:
        modes.append(FidelityMode(f"teacher_{teacher_steps}", "teacher", {"strategy": "teacher_only", "teacher_steps": teacher_steps}))
    modes.append(FidelityMode("student", "student", {"strategy": "student_only"}))
    for strategy in ("refine", "regenerate"):
        modes += [FidelityMode(f"{strategy}_k{k}", strategy, {"strategy": strategy, "k": float(k)}) for k in ks]
    return modes


@dataclass
class ModeImages:
    mode: FidelityMode
    generations: list[Generation]
    wall_s: float
    server_cpu_s: float | None
    fidelity: np.ndarray  # judge fidelity per image
    correct: np.ndarray  # all checks passed
    reward: np.ndarray  # ImageReward of the final image
    families: list[str]


@dataclass
class ModeRow:
    mode: str
    curve: str
    prompts: int
    judge_fidelity: float
    judge_fidelity_stderr: float
    all_correct: float
    image_reward: float
    mean_unet_steps: float
    teacher_share: float
    images_per_s: float
    server_cpu_ms_per_image: float | None
    fidelity_by_family: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update({f"fidelity_{k}": v for k, v in d.pop("fidelity_by_family").items()})
        return d


def run_mode(
    mode: FidelityMode,
    url: str,
    prompts: Sequence[str],
    *,
    concurrency: int,
    judge: Callable[[np.ndarray, str], Any],
    reward: Callable[[list[np.ndarray], list[str]], np.ndarray],
    family: Callable[[str], str],
    cpu_seconds: Callable[[], float] | None = None,
) -> ModeImages:
    """All prompts through the server (one single-row request each, ``concurrency`` in flight).

    A warm-up round of ``2 * concurrency`` requests of the mode goes first, unmeasured: ONNX Runtime
    plans each new batch shape on its first run.
    """
    generate_all(lambda: AdaptiveClient(url, "grpc"), list(prompts[: 2 * concurrency]), 0, None, concurrency, mode.fields)
    cpu0 = cpu_seconds() if cpu_seconds else None
    start = time.perf_counter()
    generations = generate_all(lambda: AdaptiveClient(url, "grpc"), list(prompts), 0, None, concurrency, mode.fields)
    wall = time.perf_counter() - start
    cpu = cpu_seconds() - cpu0 if cpu_seconds and cpu0 is not None else None
    verdicts = [judge(g.image, g.prompt) for g in generations]
    return ModeImages(
        mode=mode,
        generations=generations,
        wall_s=wall,
        server_cpu_s=cpu,
        fidelity=np.asarray([v.fidelity for v in verdicts]),
        correct=np.asarray([v.correct for v in verdicts]),
        reward=reward([g.image for g in generations], list(prompts)),
        families=[family(p) for p in prompts],
    )


def summarize(images: ModeImages) -> ModeRow:
    n = len(images.generations)
    steps = np.asarray([g.unet_steps for g in images.generations], dtype=float)
    teacher = np.mean([g.route != "student" for g in images.generations])
    families = sorted(set(images.families))
    return ModeRow(
        mode=images.mode.name,
        curve=images.mode.curve,
        prompts=n,
        judge_fidelity=float(images.fidelity.mean()),
        judge_fidelity_stderr=float(images.fidelity.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
        all_correct=float(images.correct.mean()),
        image_reward=float(images.reward.mean()),
        mean_unet_steps=float(steps.mean()),
        teacher_share=float(teacher),
        images_per_s=n / images.wall_s,
        server_cpu_ms_per_image=1000 * images.server_cpu_s / n if images.server_cpu_s is not None else None,
        fidelity_by_family={f: float(np.mean([x for x, g in zip(images.fidelity, images.families) if g == f])) for f in families},
    )


@dataclass
class HeadToHead:
    """Student vs teacher on the same prompt and seed (the paper's Figure 1, right)."""

    prompts: int
    student_wins: float
    ties: float
    teacher_wins: float
    student_wins_by_reward: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def head_to_head(student: ModeImages, teacher: ModeImages) -> HeadToHead:
    s, t = student.fidelity, teacher.fidelity
    return HeadToHead(
        prompts=len(s),
        student_wins=float(np.mean(s > t)),
        ties=float(np.mean(s == t)),
        teacher_wins=float(np.mean(s < t)),
        student_wins_by_reward=float(np.mean(student.reward > teacher.reward)),
    )


@dataclass
class Agreement:
    """How well ImageReward tracks the judge."""

    population: str
    images: int
    spearman: float
    pearson: float
    # Of two images with different judge fidelity, how often the higher-fidelity one scores higher.
    pairwise_agreement: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(population: str, reward: np.ndarray, fidelity: np.ndarray) -> Agreement:
    from scipy import stats

    diff_f = fidelity[:, None] - fidelity[None, :]
    diff_r = reward[:, None] - reward[None, :]
    ranked = diff_f > 0
    return Agreement(
        population=population,
        images=len(reward),
        spearman=float(stats.spearmanr(reward, fidelity).statistic),
        pearson=float(stats.pearsonr(reward, fidelity).statistic),
        pairwise_agreement=float((diff_r[ranked] > 0).mean()) if ranked.any() else float("nan"),
    )
