"""What every training stage shares: threads, resumable snapshots, wall and CPU clocks, progress bars.

A stage keeps its working state under ``work/<stage>/``: ``state.pt`` (a snapshot taken every
``checkpoint_every`` steps, written atomically) and ``done.json`` once finished (with its wall and
process CPU seconds). ``--resume`` continues from the snapshot; a stage that is done is skipped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from export.world.config import FAMILY_WEIGHTS
from export.world.grammar import Caption


def configure_torch(threads: int) -> None:
    import warnings

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", message="The value of the smallest subnormal")
    # Adam's second moments decay into float32 denormals, which made its sqrt 100x slower on this CPU.
    torch.set_flush_denormal(True)


@dataclass
class Clock:
    """Wall and process CPU seconds of a stage, carried across resumes."""

    wall: float = 0.0
    cpu: float = 0.0
    _wall0: float = field(default_factory=time.perf_counter, repr=False)
    _cpu0: float = field(default_factory=time.process_time, repr=False)

    def lap(self) -> "Clock":
        now_wall, now_cpu = time.perf_counter(), time.process_time()
        self.wall += now_wall - self._wall0
        self.cpu += now_cpu - self._cpu0
        self._wall0, self._cpu0 = now_wall, now_cpu
        return self

    def as_dict(self) -> dict[str, float]:
        self.lap()
        return {"wall_s": round(self.wall, 1), "cpu_s": round(self.cpu, 1)}


class StageDir:
    """``work/<stage>/``: the snapshot, the done marker and the stage's own files."""

    def __init__(self, work: Path, name: str) -> None:
        self.name = name
        self.path = Path(work) / name
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def done_file(self) -> Path:
        return self.path / "done.json"

    def is_done(self) -> bool:
        return self.done_file.is_file()

    def report(self) -> dict[str, Any]:
        return json.loads(self.done_file.read_text())

    def finish(self, clock: Clock, **info: Any) -> dict[str, Any]:
        report = {"stage": self.name, **clock.as_dict(), "threads": torch.get_num_threads(), **info}
        self.done_file.write_text(json.dumps(report, indent=2) + "\n")
        snapshot = self.path / "state.pt"
        if snapshot.exists():
            snapshot.unlink()  # only needed to resume; the stage's outputs are written
        return report

    def reset(self) -> None:
        for p in (self.done_file, self.path / "state.pt"):
            if p.exists():
                p.unlink()

    def save_state(self, state: dict[str, Any]) -> None:
        tmp = self.path / "state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.path / "state.pt")

    def load_state(self) -> dict[str, Any] | None:
        path = self.path / "state.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def snapshot_if_due(self, done_steps: int, total: int, every: int, clock: Clock, state: Callable[[], dict[str, Any]]) -> None:
        """After ``done_steps`` of ``total``: save ``state()`` (plus the step and the clock) every ``every``
        steps, but not after the last one, whose outputs the stage writes itself."""
        if done_steps % every == 0 and done_steps < total:
            clock.lap()
            self.save_state({**state(), "step": done_steps, "wall": clock.wall, "cpu": clock.cpu})


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])


def progress(total: int, initial: int, desc: str, enabled: bool = True) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True, mininterval=2.0)


class CaptionSampler:
    """Draws training captions: a family by ``FAMILY_WEIGHTS``, then a caption of it uniformly."""

    def __init__(self, captions: tuple[Caption, ...], rng: np.random.Generator) -> None:
        self.by_family = {f: [c for c in captions if c.family == f] for f in FAMILY_WEIGHTS}
        self.by_family = {f: cs for f, cs in self.by_family.items() if cs}
        weights = np.asarray([FAMILY_WEIGHTS[f] for f in self.by_family])
        self.families = list(self.by_family)
        self.p = weights / weights.sum()
        self.rng = rng

    def draw(self, n: int) -> list[Caption]:
        families = self.rng.choice(len(self.families), size=n, p=self.p)
        out = []
        for f in families:
            members = self.by_family[self.families[f]]
            out.append(members[self.rng.integers(len(members))])
        return out

    def __iter__(self) -> Iterator[Caption]:
        while True:
            yield from self.draw(256)


def cosine_lr(step: int, total: int, base: float, warmup: int = 100, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``floor * base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * t)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def clipped_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter], max_norm: float = 1.0) -> None:
    """Backpropagate ``loss`` and take one optimizer step with the gradient norm clipped: every
    stage trains from scratch, where early gradients spike."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    optimizer.step()


class LossMeter:
    """The running loss a stage reports: an exponential moving average, shown on its progress bar."""

    def __init__(self, bar: tqdm, decay: float = 0.98, digits: int = 4) -> None:
        self.bar, self.decay, self.digits = bar, decay, digits
        self.value: float | None = None

    def update(self, loss: torch.Tensor) -> None:
        x = loss.item()
        self.value = x if self.value is None else self.decay * self.value + (1 - self.decay) * x
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.value:.{self.digits}f}")
