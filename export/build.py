"""Checkpoints in, a servable model repository out: the one entry every exporter calls.

``export_repository`` runs the stages in order (load checkpoints, export and check ONNX graphs,
write the Triton repository, calibrate tau) into a staging folder and publishes it by one rename,
so a failed or interrupted export never leaves a half-written repository. ``python -m export``,
``ensure_repository`` (tests, ``make demo``, benchmarks, the GPU smoke test) and the launcher's
``--preset`` all go through it. TensorRT engines are built from its output (``export.tensorrt``).
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from bll_python.deployment import MANIFEST, Calibration, Deployment
from bll_python.layout import assets_dir, clip_tokenizer_2_dir, clip_tokenizer_dir, onnx_path, reward_vocab
from bll_python.prompts import read_prompts
from bll_python.settings import GenerationSettings
from export.checkpoints.errors import SourceError
from export.checkpoints.sources import LoadedModels, Sources, load_sources
from export.checkpoints.tokenizers import write_bert_vocab
from export.defaults import CALIBRATION_PROMPTS, DEFAULT_MAX_ROWS, DEFAULT_ROOT, PRESET_CALIBRATION_PROMPTS
from export.onnx.graph import export_onnx
from export.onnx.parity import ParityReport, check_onnx


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


def default_size_range(native: int, multiple: int) -> tuple[int, int]:
    """Half to one and a half times the native side, on the size grid: the engines' profile range."""
    low = max(multiple, (native // 2) // multiple * multiple)
    high = max(native, (native * 3 // 2) // multiple * multiple)
    return low, high


def make_deployment(
    models: LoadedModels, *, preset: str, max_rows: int, defaults: GenerationSettings | None = None, image_sizes: tuple[int, int] | None = None
) -> Deployment:
    native = models.dims["latent_size"] * models.dims["vae_scale"]
    low, high = image_sizes or default_size_range(native, models.dims["size_multiple"])
    if not low <= native <= high or low % models.dims["size_multiple"] or high % models.dims["size_multiple"]:
        raise SourceError(f"--image-sizes: got [{low}, {high}]; the range must hold the native {native} and its ends be multiples of {models.dims['size_multiple']}")
    return Deployment(
        min_image_size=low,
        max_image_size=high,
        preset=preset,
        student_kind=models.kind.name,
        max_rows=max_rows,
        reward_text_len=35,
        student_scheduler=models.student_scheduler,
        teacher_scheduler=models.teacher_scheduler,
        defaults=defaults or GenerationSettings(**models.kind.defaults_for(models.family.name)),
        student_uses_cfg=models.kind.uses_cfg,
        **models.dims,
    )


def calibrate_repository(repository: Path, prompts: Sequence[str], defaults: GenerationSettings, *, batch: int = 8, progress: bool = True) -> Calibration:
    """Tau for every percentile, from the repository's own graphs and session options (``bll_python.calibration``)."""
    from bll_python.calibration import calibrate
    from bll_python.inprocess import inprocess_pipeline

    with tqdm(total=len(prompts), desc="calibrating tau", disable=not progress, unit="prompt") as bar:
        calibration, _ = calibrate(inprocess_pipeline(repository), prompts, defaults=defaults, batch=batch, progress=lambda done, _total: bar.update(done - bar.n))
    return calibration


@contextmanager
def _staged(target: Path) -> Iterator[Path]:
    """A fresh ``<target>.partial`` to write into; it replaces ``target`` by one rename on success
    and is removed on any error, so ``target`` is either the old repository or the whole new one."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)


def export_repository(
    sources: Sources,
    repository: Path,
    *,
    preset: str = "custom",
    max_rows: int = DEFAULT_MAX_ROWS,
    defaults: GenerationSettings | None = None,
    calibration_prompts: Sequence[str] | None = None,
    progress: bool = True,
    image_sizes: tuple[int, int] | None = None,
) -> ExportSummary:
    """Export ``sources`` into an ONNX Runtime repository at ``repository`` (replacing one there).

    ``image_sizes``: the (min, max) image side requests may ask for (default: ``default_size_range``)."""
    from export.triton.onnxruntime import write_onnxruntime_repository

    start = time.perf_counter()
    repository = Path(repository)
    models = load_sources(sources)
    deployment = make_deployment(models, preset=preset, max_rows=max_rows, defaults=defaults, image_sizes=image_sizes)
    specs = deployment.specs()
    summary = ExportSummary(repository)
    with _staged(repository) as staging:
        for name, spec in tqdm(specs.items(), desc="exporting ONNX", disable=not progress, unit="model"):
            path = export_onnx(models.modules[name], spec, onnx_path(staging, name))
            summary.parity.append(check_onnx(models.modules[name], spec, path))
            summary.sizes[name] = sum(p.stat().st_size for p in path.parent.glob("model.onnx*"))

        assets = assets_dir(staging)
        assets.mkdir(parents=True, exist_ok=True)
        shutil.copytree(models.tokenizer_dir, clip_tokenizer_dir(staging), dirs_exist_ok=True)
        if models.tokenizer_2_dir is not None:
            shutil.copytree(models.tokenizer_2_dir, clip_tokenizer_2_dir(staging), dirs_exist_ok=True)
        write_bert_vocab(reward_vocab(staging).parent)
        deployment.save(assets)
        (assets / "export_report.json").write_text(json.dumps({r.component: r.max_abs_error for r in summary.parity}, indent=2))
        write_onnxruntime_repository(staging, deployment)

        if calibration_prompts:
            deployment.calibration = calibrate_repository(staging, calibration_prompts, deployment.defaults, batch=max_rows, progress=progress)
            summary.calibration = deployment.calibration
            deployment.save(assets)
            # The BLS admission queue is sized from the calibration's timing (placement.admission_queue_size).
            write_onnxruntime_repository(staging, deployment)
    summary.seconds = time.perf_counter() - start
    return summary


def preset_repository(preset: str, root: Path = DEFAULT_ROOT) -> Path:
    return Path(root) / preset / "repository"


def checkpoint_dir(repository: Path) -> Path:
    """Where a preset's checkpoints go: beside its repository (``artifacts/<name>/{checkpoints,repository}``)."""
    repository = Path(repository)
    return repository.parent / "checkpoints" if repository.name == "repository" else repository.with_name(repository.name + "-checkpoints")


def ensure_repository(preset: str = "tiny", root: Path = DEFAULT_ROOT, *, calibration_prompts: int = PRESET_CALIBRATION_PROMPTS, progress: bool = True) -> Path:
    """The preset's repository, exported first if missing (random weights in real formats, or shapes' trained ones)."""
    from export.checkpoints.presets import preset_plan
    from export.triton.onnxruntime import write_onnxruntime_repository

    repository = preset_repository(preset, root)
    if (assets_dir(repository) / MANIFEST).is_file():
        # Weights are reused; configs, model.py files and the bundled core are rewritten so code changes take effect.
        write_onnxruntime_repository(repository, Deployment.load(assets_dir(repository)))
        return repository
    plan = preset_plan(preset, checkpoint_dir(repository), calibration_prompts=calibration_prompts)
    summary = export_repository(plan.sources, repository, preset=preset, defaults=plan.defaults, calibration_prompts=plan.calibration_prompts, progress=progress)
    if progress:
        print(summary)
    return repository


def repository_or_preset(repository: Path | None, preset: str, *, progress: bool = False) -> tuple[Path, str]:
    """``repository`` when given, else the preset's (exported first if missing), and a label for results."""
    if repository is not None:
        return Path(repository), Path(repository).name
    return ensure_repository(preset, progress=progress), preset
