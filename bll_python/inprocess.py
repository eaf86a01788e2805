"""The pipeline with ONNX Runtime engines over a generated repository, no server involved."""

from __future__ import annotations

from pathlib import Path

from bll_python.deployment import Deployment
from bll_python.engines import repository_ort_engines
from bll_python.layout import assets_dir, clip_tokenizer_2_dir, clip_tokenizer_dir, reward_vocab
from bll_python.pipeline import AdaptivePipeline
from bll_python.text import PromptTokenizers


def load_tokenizers(repository: Path, deployment: Deployment) -> PromptTokenizers:
    second = clip_tokenizer_2_dir(repository) if deployment.family == "sdxl" else None
    return PromptTokenizers(clip_tokenizer_dir(repository), reward_vocab(repository), deployment.reward_text_len, clip_2_dir=second)


def inprocess_pipeline(repository: Path) -> AdaptivePipeline:
    """The served graphs with the served session settings, minus Triton: the in-process limit."""
    deployment = Deployment.load(assets_dir(repository))
    engines = repository_ort_engines(repository, deployment.specs())
    return AdaptivePipeline(engines, deployment, load_tokenizers(repository, deployment))
