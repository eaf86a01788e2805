"""Judge fidelity of teacher and student samples for a grid of settings, on the calibration prompts.

Used to choose the serving defaults (guidance, step counts) without touching the held-out prompts
the benchmark reports on. Samples come from diffusers' own pipelines (DPM-Solver++ 2M for the
teacher, LCMScheduler for the student), which the parity tests tie to the served pipeline.

    python -m export.world evaluate --guidance 2 3 4 6 --teacher-steps 10 20 --student-steps 1 2 4
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from export.world.grammar import parse
from export.world.judge import judge_caption


@dataclass
class SettingFidelity:
    model: str
    steps: int
    guidance: float
    prompts: int
    fidelity: float
    all_correct: float
    by_family: dict[str, float]


def _fidelity(pipe, prompts: Sequence[str], steps: int, guidance: float, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    fid, ok = [], []
    for i in range(0, len(prompts), batch):
        chunk = list(prompts[i : i + batch])
        generators = [torch.Generator().manual_seed(i + j) for j in range(len(chunk))]
        with torch.no_grad():
            images = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="np").images
        for image, prompt in zip(images, chunk):
            verdict = judge_caption((np.clip(image, 0, 1) * 255).round().astype(np.uint8), parse(prompt))
            fid.append(verdict.fidelity)
            ok.append(verdict.correct)
    return np.asarray(fid), np.asarray(ok)


def evaluate(out: Path, prompts: Sequence[str], guidance: Sequence[float], teacher_steps: Sequence[int], student_steps: Sequence[int]) -> list[SettingFidelity]:
    from export.world.reward import _pipelines

    teacher, student = _pipelines(out) if (Path(out) / "student" / "unet").is_dir() else (_teacher_only(out), None)
    families = [parse(p).family for p in prompts]
    results = []
    for model, pipe, step_list in (("teacher", teacher, teacher_steps), ("student", student, student_steps)):
        if pipe is None:
            continue
        for steps in step_list:
            for g in guidance:
                fid, ok = _fidelity(pipe, prompts, steps, g)
                by_family = {f: float(np.mean([x for x, ff in zip(fid, families) if ff == f])) for f in sorted(set(families))}
                results.append(SettingFidelity(model, steps, g, len(prompts), float(fid.mean()), float(ok.mean()), by_family))
    return results


def _teacher_only(out: Path):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(Path(out) / "teacher", safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def format_table(results: Sequence[SettingFidelity]) -> str:
    families = list(results[0].by_family) if results else []
    lines = ["| model | steps | guidance | judge fidelity | all correct | " + " | ".join(families) + " |", "|---|---|---|---|---|" + "---|" * len(families)]
    for r in results:
        lines.append(f"| {r.model} | {r.steps} | {r.guidance:g} | {r.fidelity:.3f} | {r.all_correct:.1%} | " + " | ".join(f"{r.by_family[f]:.3f}" for f in families) + " |")
    return "\n".join(lines)
