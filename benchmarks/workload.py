"""The requests a benchmark sends: prompts with their seeds, and perf_analyzer's input-data file.

perf_analyzer cycles through the input-data entries in one global round robin (checked: with 8
entries, 16 requests hit each entry twice at any concurrency). A request count that is a multiple
of the entry count therefore sends every prompt equally often, and the in-process run over the same
entries sees the same rows, hence the same teacher share in the adaptive modes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.modes import Mode
from bll_python.prompts import read_prompts

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
TEST_PROMPTS = PROMPTS_DIR / "test.txt"
HELDOUT_PROMPTS = PROMPTS_DIR / "heldout.txt"


@dataclass(frozen=True)
class Workload:
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]

    @classmethod
    def from_file(cls, path: Path, count: int, first_seed: int = 0) -> "Workload":
        prompts = read_prompts(path)[:count]
        if len(prompts) < count:
            raise ValueError(f"{path} has {len(prompts)} prompts, {count} wanted")
        return cls(tuple(prompts), tuple(range(first_seed, first_seed + count)))

    def __len__(self) -> int:
        return len(self.prompts)

    def rows(self, start: int, count: int) -> tuple[list[str], list[int]]:
        """``count`` rows from ``start``, wrapping around, as perf_analyzer's round robin does."""
        idx = [(start + i) % len(self) for i in range(count)]
        return [self.prompts[i] for i in idx], [self.seeds[i] for i in idx]


def perf_input_data(workload: Workload, mode: Mode) -> dict[str, Any]:
    """perf_analyzer's JSON input data: one entry (one request of one row) per prompt."""
    entries = []
    for prompt, seed in zip(workload.prompts, workload.seeds):
        entry: dict[str, Any] = {"prompt": [prompt], "seed": [seed]}
        for name, value in mode.request_fields().items():
            entry[name] = [value]
        entries.append(entry)
    return {"data": entries}


def write_input_data(path: Path, workload: Workload, mode: Mode) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(perf_input_data(workload, mode), indent=1))
    return path
