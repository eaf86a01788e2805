"""perf_analyzer from the tritonclient wheel: where its binary is and the environment it needs.

    subprocess.run(perf_analyzer_command() + [...args], env=perf_analyzer_env())

From a shell, with nothing set up (``make perf ARGS="..."`` is the same after the install)::

    python -m benchmarks.perf_analyzer -m adaptive_diffusion -u 127.0.0.1:8001 -i grpc ...

It links ``libcudart.so.12`` even when no GPU is used (from the nvidia-cuda-runtime-cu12 wheel) and
Debian's ``libb64.so.0d`` (``apt-get install -y libb64-0d``; ``make test``/``make bench`` install it
when run as root).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Sequence

LIBB64_HINT = "apt-get install -y libb64-0d"


def _site_packages_dirs() -> list[Path]:
    dirs = [Path(p) for p in sys.path if p and p.endswith("site-packages")]
    for key in ("purelib", "platlib"):
        path = Path(sysconfig.get_paths()[key])
        if path not in dirs:
            dirs.append(path)
    return dirs


def _perf_analyzer_binary() -> Path:
    candidates = []
    for site in _site_packages_dirs():
        candidates += [site / "tritonclient" / "bin" / "perf_analyzer", site / "tritonclient" / "perf_analyzer"]
    # Recent tritonclient wheels install it as a data script into the venv's bin.
    candidates += [Path(sys.prefix) / "bin" / "perf_analyzer", Path(sysconfig.get_paths()["scripts"]) / "perf_analyzer"]
    on_path = shutil.which("perf_analyzer")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("perf_analyzer not found: install tritonclient[all]==2.51.0 (it ships the binary)")


def _cuda_runtime_libdir() -> Path | None:
    for site in _site_packages_dirs():
        libdir = site / "nvidia" / "cuda_runtime" / "lib"
        if (libdir / "libcudart.so.12").exists():
            return libdir
    return None


def perf_analyzer_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for perf_analyzer: libcudart.so.12 from nvidia-cuda-runtime-cu12 on LD_LIBRARY_PATH.

    perf_analyzer links libcudart even when no GPU is used, and does not carry its own.
    """
    env = dict(os.environ if base is None else base)
    libdir = _cuda_runtime_libdir()
    if libdir is None:
        raise RuntimeError("libcudart.so.12 not found: pip install nvidia-cuda-runtime-cu12 (perf_analyzer needs it)")
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(libdir), *(p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != str(libdir))])
    return env


def _libb64_available(env: dict[str, str]) -> bool:
    for d in env.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if d and (Path(d) / "libb64.so.0d").exists():
            return True
    try:
        ctypes.CDLL("libb64.so.0d")
        return True
    except OSError:
        return False


def perf_analyzer_command() -> list[str]:
    """``[path/to/perf_analyzer]``; append its arguments and run it with ``env=perf_analyzer_env()``.

    Raises RuntimeError with the install command when Debian's libb64 (``libb64.so.0d``), which the
    binary links dynamically, is missing.
    """
    binary = _perf_analyzer_binary()
    if not _libb64_available(perf_analyzer_env()):
        raise RuntimeError(
            f"perf_analyzer ({binary}) needs libb64.so.0d, which is not installed. Install it with: {LIBB64_HINT}"
        )
    return [str(binary)]



def main(argv: Sequence[str] | None = None) -> int:
    """Replace this process with perf_analyzer run on ``argv``, every argument passed through unchanged.

    Returns (status 2) only when the binary or a library it needs is missing, after saying which and how
    to install it; otherwise perf_analyzer's own exit status and signals are the command's.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        command = perf_analyzer_command()
        env = perf_analyzer_env()
    except RuntimeError as exc:
        print(f"python -m benchmarks.perf_analyzer: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    # exec, not a child: Ctrl-C, the exit status and the output are perf_analyzer's own.
    os.execve(command[0], [*command, *args], env)
    raise AssertionError("unreachable")


if __name__ == "__main__":
    sys.exit(main())
