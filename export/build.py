"""Checkpoints in, a servable model repository out: ONNX graphs, parity report, configs, assets, tau."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from bll_python.deployment import MANIFEST, Calibration, Deployment
from bll_python.layout import assets_dir, clip_tokenizer_dir, onnx_path, reward_vocab
from bll_python.settings import GenerationSettings, Strategy
from bll_python.specs import COMPONENTS
from export.onnx_export import ParityReport, check_onnx, export_onnx
from export.sources import LoadedModels, Sources, load_sources
from export.tokenizers import write_bert_vocab

DEFAULT_ROOT = Path(os.environ.get("ADAPTIVE_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts"))
DEFAULT_MAX_ROWS = 8
CALIBRATION_PROMPTS = Path(__file__).resolve().parent.parent / "benchmarks" / "prompts" / "heldout.txt"


@dataclass
class ExportSummary:
    repository: Path
    parity: list[ParityReport] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    calibration: Calibration | None = None

    def __str__(self) -> str:
        lines = [f"repository: {self.repository}  ({self.seconds:.1f} s)"]
        for report in self.parity:
            lines.append(f"  {report.component:<13} {self.sizes.get(report.component, 0) / 2**20:8.2f} MiB   max |ort - torch| {report.max_abs_error:.2e}")
        if self.calibration:
            p = self.calibration.percentiles
            lines.append(f"  tau calibration: {self.calibration.prompts} prompts, k=30/50/70 -> {p[30]:.4f} / {p[50]:.4f} / {p[70]:.4f}")
        return "\n".join(lines)


def make_deployment(models: LoadedModels, *, preset: str, max_rows: int, defaults: GenerationSettings | None = None) -> Deployment:
    kind_defaults = {k: v for k, v in models.kind.defaults.items()}
    return Deployment(
        preset=preset,
        student_kind=models.kind.name,
        max_rows=max_rows,
        reward_text_len=35,
        student_scheduler=models.student_scheduler,
        teacher_scheduler=models.teacher_scheduler,
        defaults=defaults or GenerationSettings(**kind_defaults),
        student_uses_cfg=models.kind.uses_cfg,
        **models.dims,
    )


def read_prompts(path: Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]


def calibrate(repository: Path, prompts: Sequence[str], settings: GenerationSettings, *, batch: int = 8, progress: bool = True) -> Calibration:
    """Student samples with exactly the serving settings, scored by ImageReward; all percentiles 0..100."""
    import numpy as np

    from bll_python.inprocess import inprocess_pipeline

    pipe = inprocess_pipeline(repository)
    s = GenerationSettings(**{**settings.as_dict(), "strategy": Strategy.STUDENT_ONLY.value, "tau": None, "k": None})
    scores: list[float] = []
    for i in tqdm(range(0, len(prompts), batch), desc="calibrating tau", disable=not progress, unit="batch"):
        chunk = list(prompts[i : i + batch])
        result = pipe(chunk, seeds=list(range(i, i + len(chunk))), settings=s)
        scores.extend(result.scores.tolist())
    percentiles = np.percentile(np.asarray(scores), np.arange(101)).tolist()
    return Calibration(percentiles=percentiles, prompts=len(prompts), settings=s.as_dict())


def export_repository(
    sources: Sources,
    repository: Path,
    *,
    preset: str = "custom",
    max_rows: int = DEFAULT_MAX_ROWS,
    defaults: GenerationSettings | None = None,
    calibration_prompts: Sequence[str] | None = None,
    progress: bool = True,
) -> ExportSummary:
    from export.triton_repository import write_onnxruntime_repository

    start = time.perf_counter()
    repository = Path(repository)
    models = load_sources(sources)
    deployment = make_deployment(models, preset=preset, max_rows=max_rows, defaults=defaults)
    specs = deployment.specs()
    summary = ExportSummary(repository)
    for name in tqdm(COMPONENTS, desc="exporting ONNX", disable=not progress, unit="model"):
        path = export_onnx(models.modules[name], specs[name], onnx_path(repository, name))
        summary.parity.append(check_onnx(models.modules[name], specs[name], path))
        summary.sizes[name] = sum(p.stat().st_size for p in path.parent.glob("model.onnx*"))

    assets = assets_dir(repository)
    assets.mkdir(parents=True, exist_ok=True)
    shutil.copytree(models.tokenizer_dir, clip_tokenizer_dir(repository), dirs_exist_ok=True)
    write_bert_vocab(reward_vocab(repository).parent)
    deployment.save(assets)
    (assets / "export_report.json").write_text(json.dumps({r.component: r.max_abs_error for r in summary.parity}, indent=2))
    write_onnxruntime_repository(repository, deployment)

    if calibration_prompts:
        deployment.calibration = calibrate(repository, calibration_prompts, deployment.defaults, batch=max_rows, progress=progress)
        summary.calibration = deployment.calibration
        deployment.save(assets)
    summary.seconds = time.perf_counter() - start
    return summary


def preset_repository(preset: str, root: Path = DEFAULT_ROOT) -> Path:
    return Path(root) / preset / "repository"


def ensure_repository(preset: str = "tiny", root: Path = DEFAULT_ROOT, *, calibration_prompts: int = 64, progress: bool = True) -> Path:
    """The preset's repository, exported first if missing (random weights in real formats, or shapes' trained ones)."""
    from export.presets import write_preset

    from export.triton_repository import write_onnxruntime_repository

    repository = preset_repository(preset, root)
    if (assets_dir(repository) / MANIFEST).is_file():
        # Weights are reused; configs and model.py files are rewritten so code changes take effect.
        write_onnxruntime_repository(repository, Deployment.load(assets_dir(repository)))
        return repository
    from export.world.preset import trained_preset

    trained = trained_preset(preset)  # committed, trained checkpoints (shapes): exported as they are
    if trained:
        sources, prompts, defaults = trained.sources, trained.calibration_prompts, trained.defaults
    else:
        checkpoints = write_preset(Path(root) / preset / "checkpoints", preset)
        sources = Sources(teacher=checkpoints["teacher"], student=checkpoints["student"], student_kind="cd", reward=checkpoints["reward"], reward_config=checkpoints["reward_config"])
        prompts = read_prompts(CALIBRATION_PROMPTS)[:calibration_prompts] if CALIBRATION_PROMPTS.is_file() else None
        defaults = None
    staging = repository.with_name(repository.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    summary = export_repository(sources, staging, preset=preset, defaults=defaults, calibration_prompts=prompts, progress=progress)
    shutil.rmtree(repository, ignore_errors=True)
    staging.rename(repository)
    if progress:
        print(str(summary).replace(str(staging), str(repository)))
    return repository


def repository_or_preset(repository: Path | None, preset: str) -> tuple[Path, str]:
    """``repository`` when given, else the preset's (exported first if missing), and a label for results."""
    if repository is not None:
        return Path(repository), Path(repository).name
    return ensure_repository(preset, progress=False), preset
