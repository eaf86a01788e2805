"""``python -m benchmarks.perf_analyzer ARGS...`` (and ``make perf ARGS=...``): perf_analyzer with nothing set up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import perf_analyzer

ROOT = Path(__file__).resolve().parent.parent


class _Execed(Exception):
    pass


def test_every_argument_reaches_perf_analyzer_unchanged_with_its_library_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_execve(path, argv, env):
        calls.append((path, argv, env))
        raise _Execed

    monkeypatch.setattr(perf_analyzer.os, "execve", fake_execve)
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    args = ["-m", "adaptive_diffusion", "-u", "127.0.0.1:8001", "--string-data", "a red fox; rm -rf /", "--request-count", "8"]
    with pytest.raises(_Execed):
        perf_analyzer.main(args)
    ((path, argv, env),) = calls
    assert path == perf_analyzer.perf_analyzer_command()[0] and path.endswith("perf_analyzer")
    assert argv == [path, *args]
    assert (perf_analyzer._cuda_runtime_libdir() / "libcudart.so.12").exists()
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(perf_analyzer._cuda_runtime_libdir())


def test_a_missing_library_is_named_with_its_install_command_and_status_2(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(perf_analyzer, "_libb64_available", lambda env: False)
    monkeypatch.setattr(perf_analyzer.os, "execve", lambda *a: pytest.fail("must not run perf_analyzer"))
    assert perf_analyzer.main(["--version"]) == 2
    assert perf_analyzer.LIBB64_HINT in capsys.readouterr().err


def test_the_binary_runs_from_a_shell_with_no_library_path() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    run = subprocess.run([sys.executable, "-m", "benchmarks.perf_analyzer", "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Perf Analyzer Version 2.51" in run.stdout + run.stderr  # it prints its version on stderr


def test_perf_analyzer_s_own_exit_status_comes_back() -> None:
    run = subprocess.run([sys.executable, "-m", "benchmarks.perf_analyzer", "--no-such-option"], capture_output=True, text=True, timeout=60)
    assert run.returncode not in (0, 2)
    assert "unrecognized option '--no-such-option'" in run.stderr


def test_make_perf_passes_args_through() -> None:
    # -o: take the venv and libb64 as installed, so the test never reinstalls anything.
    run = subprocess.run(
        ["make", "-s", "-o", "venv", "-o", "system-deps", "perf", "ARGS=--no-such-option"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0
    assert "unrecognized option '--no-such-option'" in run.stderr
