"""The committed shapes weights do what the method needs, on a fixed prompt set and seeds.

The checkpoints load through the project's loaders (torch engines, no export), tau is calibrated
on the calibration prompts exactly as the export does, and the judge scores the held-out images:
- the teacher's judge fidelity beats the student's;
- adaptive refinement at k = 50 beats the student alone, at fewer average steps than the teacher;
- ImageReward's score correlates positively with the judge on student samples (the gate's input).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from bll_python.deployment import Calibration
from bll_python.engines import Engines, TorchEngine
from bll_python.pipeline import AdaptivePipeline
from bll_python.settings import GenerationSettings, Strategy
from bll_python.text import PromptTokenizers
from export.build import make_deployment
from export.checkpoints.sources import load_sources
from export.checkpoints.tokenizers import ASSETS, BERT_VOCAB
from export.world.config import CALIBRATION_FILE, CHECKPOINTS_DIR, HELDOUT_FILE
from export.world.judge import judge
from export.world.preset import shapes_defaults, shapes_sources

PROMPTS = 48  # the first held-out prompts, seeds 0..47 (every family is among them)
CALIBRATION = 64  # the first calibration prompts, seeds 0..63


def _read(path) -> list[str]:
    from benchmarks.workload import read_prompts

    return read_prompts(path)


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(2)
    models = load_sources(shapes_sources(CHECKPOINTS_DIR))
    deployment = make_deployment(models, preset="shapes", max_rows=16, defaults=shapes_defaults())
    engines = Engines(**{name: TorchEngine(models.modules[name], spec) for name, spec in deployment.specs().items()})
    tokenizers = PromptTokenizers(CHECKPOINTS_DIR / "teacher" / "tokenizer", Path(str(ASSETS / BERT_VOCAB)))
    pipe = AdaptivePipeline(engines, deployment, tokenizers)
    student = GenerationSettings(**{**deployment.defaults.as_dict(), "strategy": Strategy.STUDENT_ONLY.value})
    calibration = _run(pipe, _read(CALIBRATION_FILE)[:CALIBRATION], student)
    deployment.calibration = Calibration(np.percentile(calibration["scores"], np.arange(101)).tolist(), CALIBRATION, student.as_dict())
    return pipe


def _run(pipe: AdaptivePipeline, prompts: list[str], settings: GenerationSettings) -> dict[str, np.ndarray]:
    images, scores, steps = [], [], []
    with torch.no_grad():
        for i in range(0, len(prompts), 16):
            result = pipe(prompts[i : i + 16], seeds=list(range(i, i + len(prompts[i : i + 16]))), settings=settings)
            images += list(result.images)
            scores += result.scores.tolist()
            steps += result.unet_steps.tolist()
    fidelity = np.asarray([judge(image, p).fidelity for image, p in zip(images, prompts)])
    return {"fidelity": fidelity, "scores": np.asarray(scores), "steps": np.asarray(steps, dtype=float)}


@pytest.fixture(scope="module")
def measured(world):
    prompts = _read(HELDOUT_FILE)[:PROMPTS]
    defaults = world.deployment.defaults
    runs = {}
    for name, strategy, k in (("student", Strategy.STUDENT_ONLY, None), ("teacher", Strategy.TEACHER_ONLY, None), ("refine_k50", Strategy.REFINE, 50.0)):
        runs[name] = _run(world, prompts, GenerationSettings(**{**defaults.as_dict(), "strategy": strategy.value, "tau": None, "k": k}))
    return runs


def test_the_teacher_is_more_faithful_than_the_student(measured):
    assert measured["teacher"]["fidelity"].mean() > measured["student"]["fidelity"].mean()


def test_adaptive_refinement_at_k50_beats_the_student_alone_for_fewer_steps_than_the_teacher(measured):
    refine, student, teacher = measured["refine_k50"], measured["student"], measured["teacher"]
    assert refine["fidelity"].mean() > student["fidelity"].mean()
    assert refine["steps"].mean() < teacher["steps"].mean()


def test_image_reward_correlates_positively_with_the_judge_on_student_samples(measured):
    student = measured["student"]
    assert stats.spearmanr(student["scores"], student["fidelity"]).statistic > 0
