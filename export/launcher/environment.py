"""The wheel's tritonserver and the environment its Python-backend stub needs.

The nvidia-pytriton wheel carries the server binary, the Python backend and one backend stub per
Python version, but not a ready-to-use backend directory nor the environment the stub needs, so
this module assembles both. The stub embeds CPython and is exec'd by the server; it needs:

- ``PATH`` starting with this venv's ``bin``: the embedded interpreter locates ``python3`` on PATH and
  from its ``pyvenv.cfg`` derives ``sys.prefix``, hence the venv's site-packages. PYTHONPATH is not
  how the venv is found.
- ``LD_LIBRARY_PATH`` starting with the LIBDIR of the interpreter that created the venv: the stub links
  ``libpython3.X.so.1.0`` by soname, and without this the distro's libpython (possibly another patch
  release with another stdlib) is picked up.
- ``LD_LIBRARY_PATH`` also holding the wheel's ``nvidia_pytriton.libs``: the backend library and the
  stub find their vendored libs (libcudart, libarchive, ...) through an ``$ORIGIN``-relative RPATH that
  no longer holds once they are copied out of the wheel.

The server runs with a working directory that has no ``triton`` folder in it: the stub's interpreter
imports from its cwd, and a ``triton`` folder there shadows the ``triton`` package that torch imports.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from export.launcher.config import ADMIN_KEY_ENV


def _pytriton_dir() -> Path:
    # find_spec, not import: importing pytriton pulls in its client and logging setup.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed in this environment (it ships tritonserver)")
    return Path(next(iter(spec.submodule_search_locations)))


def tritonserver_dist_dir() -> Path:
    """The ``tritonserver`` tree inside the nvidia-pytriton wheel."""
    return _pytriton_dir() / "tritonserver"


def tritonserver_binary() -> Path:
    return tritonserver_dist_dir() / "bin" / "tritonserver"


def tritonserver_libs_dir() -> Path:
    """The wheel's vendored shared libraries (auditwheel's ``nvidia_pytriton.libs``)."""
    pkg = _pytriton_dir()
    for candidate in (pkg.parent / "nvidia_pytriton.libs", pkg / "tritonserver" / "external_libs"):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"cannot find nvidia_pytriton.libs next to {pkg}")


def python_libdir() -> Path:
    """Directory holding the shared libpython of the interpreter that created this venv."""
    soname = sysconfig.get_config_var("INSTSONAME") or f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
    # sysconfig's LIBDIR is the build-time prefix, which relocated interpreters (pyenv copies,
    # python-build-standalone) no longer live at; base_prefix/lib is where they actually are.
    candidates = [Path(sys.base_prefix) / "lib", Path(sysconfig.get_config_var("LIBDIR") or "")]
    for candidate in candidates:
        if (candidate / soname).exists():
            return candidate
    raise RuntimeError(
        f"{soname} not found in {', '.join(map(str, candidates))}: the Python-backend stub needs the shared "
        "libpython of this interpreter (build Python with --enable-shared)"
    )


def cache_dir() -> Path:
    """Where the assembled backend directory and the server's working directory live."""
    override = os.environ.get("ADS_TRITON_CACHE")
    if override:
        return Path(override)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "adaptive-diffusion-serving" / "tritonserver"


def assemble_backend_dir(root: Path | None = None) -> Path:
    """Return a ``--backend-directory`` whose ``python/`` holds the backend and this Python's stub.

    Built once per (wheel contents, Python version) and published by an atomic rename, so concurrent
    launchers never see a half-copied directory.
    """
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    dist = tritonserver_dist_dir()
    sources = {
        "libtriton_python.so": dist / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": dist / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": dist / "python_backend_stubs" / version / "triton_python_backend_stub",
    }
    missing = [str(p) for p in sources.values() if not p.exists()]
    if missing:
        raise RuntimeError(f"nvidia-pytriton lacks {', '.join(missing)} (no stub for Python {version}?)")
    digest = hashlib.sha256()
    for src in sources.values():
        st = src.stat()
        digest.update(f"{src}:{st.st_size}:{st.st_mtime_ns}".encode())
    root = Path(root) if root is not None else cache_dir()
    target = root / f"backends-py{version}-{digest.hexdigest()[:12]}"
    if (target / "python" / "triton_python_backend_stub").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=root))
    try:
        (staging / "python").mkdir()
        for name, src in sources.items():
            shutil.copy2(src, staging / "python" / name)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide it from other users sharing the cache
        try:
            staging.rename(target)
        except OSError:
            if not (target / "python" / "triton_python_backend_stub").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def safe_workdir() -> Path:
    workdir = cache_dir() / "run"
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "triton").exists():
        raise RuntimeError(f"{workdir / 'triton'} would shadow the triton package in the Python backend; remove it")
    return workdir


def prepend_paths(value: str | None, *paths: Path | str) -> str:
    parts = [str(p) for p in paths]
    if value:
        parts += [p for p in value.split(os.pathsep) if p and p not in parts]
    return os.pathsep.join(parts)


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``tritonserver`` and the Python-backend stubs it execs (see module docstring)."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = prepend_paths(env.get("PATH") or os.defpath, Path(sys.prefix) / "bin")
    env["LD_LIBRARY_PATH"] = prepend_paths(env.get("LD_LIBRARY_PATH"), python_libdir(), tritonserver_libs_dir())
    # A PYTHONHOME meant for another interpreter would make the stub's interpreter fail to start.
    env.pop("PYTHONHOME", None)
    # The admin key reaches tritonserver on its command line only: every model process (the stubs,
    # and whatever Python a model runs) inherits this environment.
    env.pop(ADMIN_KEY_ENV, None)
    return env

