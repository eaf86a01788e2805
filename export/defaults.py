"""The exporter's defaults, in a module light enough for the command line to import at once."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where presets and named exports go: artifacts/<name>/{checkpoints,repository}.
DEFAULT_ROOT = Path(os.environ.get("ADAPTIVE_ARTIFACTS", ROOT / "artifacts"))
DEFAULT_MAX_ROWS = 8
PRESET_NAMES = ("tiny", "small", "tiny-xl", "shapes")  # shapes: the trained world (export/world/)
CALIBRATION_PROMPTS = ROOT / "benchmarks" / "prompts" / "heldout.txt"
# Held-out prompts a preset is calibrated on (python -m export --preset, ensure_repository).
PRESET_CALIBRATION_PROMPTS = 64
