"""The world's training report as Markdown: each stage's wall and CPU time, each component's size.

    python -m export.world report          # the tables export/world/README.md shows

Read from ``checkpoints/training_report.json`` (written by ``train``) and the checkpoint files
themselves, so the tables say what was committed, not what the configuration asks for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# component -> (files under the checkpoints folder, class, what trained it)
COMPONENTS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "VAE": (("teacher/vae",), "diffusers `AutoencoderKL`", "stage `vae`"),
    "text encoder": (("teacher/text_encoder", "teacher/tokenizer"), "transformers `CLIPTextModel` + CLIP BPE tokenizer", "stage `teacher` (jointly)"),
    "teacher UNet": (("teacher/unet",), "diffusers `UNet2DConditionModel` (SD1.5 blocks)", "stage `teacher`"),
    "student UNet": (("student/unet",), "diffusers `UNet2DConditionModel` + `time_cond_proj_dim` 256 (LCM)", "stage `student` (LCM distillation)"),
    "reward": (("reward",), "ImageReward (BLIP ViT + BERT + MLP), THUDM's keys", "stages `pairs` + `reward`"),
}


def folder_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def component_table(checkpoints: Path) -> str:
    lines = ["| component | class | size on disk (float16) | trained by |", "|---|---|---|---|"]
    total = 0
    for name, (parts, cls, how) in COMPONENTS.items():
        size = sum(folder_bytes(Path(checkpoints) / part) for part in parts)
        total += size
        lines.append(f"| {name} | {cls} | {size / 2**20:.1f} MiB | {how} |")
    lines.append(f"| all five | | {total / 2**20:.1f} MiB | |")
    return "\n".join(lines)


def training_table(report: dict[str, Any]) -> str:
    lines = ["| stage | steps / items | wall | CPU (process) | threads | notes |", "|---|---|---|---|---|---|"]
    for name, stage in report["stages"].items():
        amount = stage.get("steps", stage.get("images", ""))
        notes = {k: v for k, v in stage.items() if k not in ("stage", "wall_s", "cpu_s", "threads", "steps", "images")}
        text = ", ".join(f"{k} {_short(v)}" for k, v in notes.items())
        lines.append(f"| {name} | {amount} | {stage['wall_s'] / 60:.1f} min | {stage['cpu_s'] / 60:.1f} min | {stage.get('threads', '')} | {text} |")
    lines.append(f"| all | | {report['total_wall_s'] / 60:.1f} min | {report['total_cpu_s'] / 60:.1f} min | | |")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return str(value)


def markdown(checkpoints: Path) -> str:
    report = json.loads((Path(checkpoints) / "training_report.json").read_text())
    machine = report["machine"]
    return (
        component_table(checkpoints)
        + f"\n\nTraining, per stage (machine: {machine['cpus']} CPUs, {machine['processor']}; wall time includes waiting for a shared CPU):\n\n"
        + training_table(report)
    )
