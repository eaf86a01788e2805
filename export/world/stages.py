"""The training stages in order, each a function ``(cfg, work, out, *, resume, show, threads) -> report``."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

from export.world.config import WorldConfig
from export.world.latents import encode_dataset
from export.world.reward import make_pairs, train_reward
from export.world.student import train_student
from export.world.teacher import train_teacher
from export.world.training import StageDir
from export.world.vae import train_vae

Stage = Callable[..., dict[str, Any]]
STAGES: dict[str, Stage] = {
    "vae": train_vae,  # out/teacher/vae
    "latents": encode_dataset,  # work/latents (the teacher's training set, encoded)
    "teacher": train_teacher,  # out/teacher (text encoder, tokenizer, unet, scheduler, model_index.json)
    "student": train_student,  # out/student (unet with the guidance embedding, LCM scheduler)
    "pairs": make_pairs,  # work/pairs (judged student / teacher samples and renders)
    "reward": train_reward,  # out/reward (ImageReward.pt + its config)
}
REPORT = "training_report.json"


def run_stages(
    cfg: WorldConfig,
    work: Path,
    out: Path,
    *,
    only: list[str] | None = None,
    restart: bool = False,
    show: bool = True,
    threads: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the stages in order (``only`` a subset); finished stages are skipped unless ``restart``."""
    names = only or list(STAGES)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    work, out = Path(work), Path(out)
    reports: dict[str, Any] = {}
    for name in STAGES:
        if name not in names:
            continue
        stage = StageDir(work, name)
        if restart:
            stage.reset()
        if stage.is_done():
            log(f"[{name}] done earlier ({stage.done_file}); --restart to train it again")
            reports[name] = stage.report()
            continue
        started = time.perf_counter()
        reports[name] = STAGES[name](cfg, work, out, resume=not restart, show=show, threads=threads)
        log(f"[{name}] finished in {time.perf_counter() - started:.0f} s: {json.dumps(reports[name])}")
    return write_report(cfg, work, out)


def write_report(cfg: WorldConfig, work: Path, out: Path) -> dict[str, Any]:
    """``out/training_report.json``: every finished stage's wall and CPU seconds, and the machine."""
    stages = {n: StageDir(work, n).report() for n in STAGES if StageDir(work, n).is_done()}
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "total_wall_s": round(sum(s["wall_s"] for s in stages.values()), 1),
        "total_cpu_s": round(sum(s["cpu_s"] for s in stages.values()), 1),
        "stages": stages,
        "config": _config_dict(cfg),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _config_dict(cfg: WorldConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)
