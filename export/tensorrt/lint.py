"""ONNX lint: Polygraphy's ``check lint`` (ONNX checker, graphsurgeon and per-node ONNX Runtime checks),
run in-process, since five CLI start-ups cost more than the checks."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from polygraphy.logger import G_LOGGER


@dataclass
class LintResult:
    path: Path
    errors: list[str]
    warnings: list[str]

    @property
    def passed(self) -> bool:
        return not self.errors


def lint_onnx(path: Path, input_shapes: Mapping[str, Sequence[int]] | None = None) -> LintResult:
    """``polygraphy check lint``: ONNX checker, graphsurgeon and per-node ONNX Runtime checks."""
    from polygraphy.tools.check.subtool.lint import Lint

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lint.json"
        argv = [str(path), "-o", str(out)]
        if input_shapes:
            argv += ["--input-shapes", *(f"{n}:[{','.join(map(str, s))}]" for n, s in input_shapes.items())]
        tool = Lint()
        args = tool.setup_parser().parse_args(argv)
        tool.parse(args)
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
            tool.run(args)
        report = json.loads(out.read_text()) if out.is_file() else {"summary": {"failing": ["<no report written>"]}, "lint_entries": []}
    entries = report.get("lint_entries", [])
    errors = [e.get("message", "") for e in entries if e.get("level") == "exception"]
    errors += [f"failing node: {n}" for n in report.get("summary", {}).get("failing", [])]
    warnings = [e.get("message", "") for e in entries if e.get("level") == "warning"]
    return LintResult(Path(path), errors, warnings)
