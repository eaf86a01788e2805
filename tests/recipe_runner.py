"""Running a Markdown block the way its reader would, against a server on other ports.

The reader has run ``make venv`` and ``. .venv/bin/activate`` and stands in the repository root; a
server answers on localhost:8000 (HTTP), 8001 (gRPC) and 8002 (metrics). The test's server has free
ports instead, so ``rewrite_addresses`` changes those three addresses in the block's text just before
it runs; the Markdown keeps the documented ones.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.markdown_blocks import CONSOLE, PYTHON, SHELL, Block

# `curl` exits 0 on an HTTP error and prints the error JSON: a broken recipe would pass. The reader
# sees that JSON; the test turns it into a failure. bash -e: a block stops at its first failing line.
SHELL_PRELUDE = 'set -e -o pipefail\ncurl() { command curl --fail-with-body "$@"; }\n'

_ADDRESS = re.compile(r"\b(localhost|127\.0\.0\.1):(8000|8001|8002)\b")
# A backslash followed by blanks (and maybe a comment) escapes a blank, not the newline: the command
# ends there and the next line runs as a command of its own.
_BROKEN_CONTINUATION = re.compile(r"\\[ \t]+(#.*)?$")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_ANY_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


@dataclass(frozen=True)
class Server:
    """Where the test's server answers, and its admin key."""

    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    admin_key: str


def rewrite_addresses(text: str, server: Server) -> str:
    """``text`` with localhost/127.0.0.1 :8000, :8001, :8002 pointing at ``server``'s ports instead."""
    ports = {8000: server.http_port, 8001: server.grpc_port, 8002: server.metrics_port}
    return _ADDRESS.sub(lambda m: f"{m[1]}:{ports[int(m[2])]}", text)


def reader_env(venv: Path, server: Server) -> dict[str, str]:
    """The reader's shell: the venv activated, no library path set up by hand, the admin key exported."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["ADS_ADMIN_KEY"] = server.admin_key
    return env


def syntax_problems(block: Block) -> list[str]:
    """What keeps a block from running as written, found without running it."""
    if block.language in SHELL:
        problems = [
            f"line {n}: a backslash followed by blanks does not continue the command: {line.strip()!r}"
            for n, line in enumerate(block.text.splitlines(), 1)
            if _BROKEN_CONTINUATION.search(line)
        ]
        check = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
        return problems + ([check.stderr.strip()] if check.returncode else [])
    if block.language in PYTHON:
        try:
            compile(block.text, "<block>", "exec")
        except SyntaxError as exc:
            return [f"line {exc.lineno}: {exc.msg}"]
    if block.language in CONSOLE and not console_steps(block.text):
        return ["a console block without a `$ command` line"]
    return []


def console_steps(text: str) -> list[tuple[str, list[str]]]:
    """``(command, shown output lines)`` for each ``$ command`` line of a console block."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and line.strip():
            steps[-1][1].append(line)
    return steps


def output_pattern(shown: str) -> re.Pattern[str]:
    """A shown output line as a pattern: the same text, any number where it shows one."""
    parts = [re.escape(piece) for piece in _NUMBER.split(shown)]
    return re.compile("^" + _ANY_NUMBER.join(parts) + "$")


def missing_output(shown: list[str], actual: str) -> list[str]:
    """The shown lines that match no line of ``actual`` (order aside, numbers aside)."""
    lines = actual.splitlines()
    return [s for s in shown if not any(output_pattern(s).match(a) for a in lines)]


def run_block(block: Block, *, cwd: Path, env: dict[str, str], server: Server, timeout_s: float) -> str:
    """Run a runnable block; its output, or AssertionError with the output when it fails."""
    text = rewrite_addresses(block.text, server)
    if block.language in PYTHON:
        return _run(["python", "-"], text, cwd=cwd, env=env, timeout_s=timeout_s)
    if block.language in SHELL:
        return _run(["bash", "-c", SHELL_PRELUDE + text], None, cwd=cwd, env=env, timeout_s=timeout_s)
    assert block.language in CONSOLE, block.language
    outputs = []
    for command, shown in console_steps(text):
        output = _run(["bash", "-c", SHELL_PRELUDE + command], None, cwd=cwd, env=env, timeout_s=timeout_s)
        missing = missing_output(shown, output)
        assert not missing, f"$ {command}\nshown but not printed:\n" + "\n".join(missing) + f"\n--- printed:\n{output[-4000:]}"
        outputs.append(output)
    return "\n".join(outputs)


def _run(argv: list[str], stdin: str | None, *, cwd: Path, env: dict[str, str], timeout_s: float) -> str:
    proc = subprocess.run(
        argv, input=stdin, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{output[-4000:]}"
    return output
