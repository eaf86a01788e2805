"""Prompt files: one prompt a line, ``#`` lines are comments (held-out and test sets, client input)."""

from __future__ import annotations

from pathlib import Path


def read_prompts(path: Path) -> list[str]:
    """The non-empty lines of ``path`` that are not ``#`` comments, stripped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
