"""The pod's init step: a TensorRT repository for this GPU, built once per GPU model and TensorRT release.

    python -m export.deploy.engine_cache --onnx /models/onnx --cache /engine-cache --link /serving/repository \\
        --backend python-trt --unet-instances 2 -- [more export.tensorrt flags]

A TensorRT plan runs only on the GPU model and TensorRT release that built it; the ONNX repository is
the portable artefact. The cache (a volume every pod of the fleet mounts) holds one repository per
key: the GPU's name, the TensorRT version, and a digest of the ONNX repository and the build flags,
so a new model or new flags build anew instead of serving stale engines. The first pod of a GPU type
builds (minutes), the others find it: each build goes to a folder of its own and is renamed into place
when complete, so pods that race both build and one of them wins, and no pod ever serves half a
build. ``--link`` gets a symlink to the cached repository: the server container's ``--repository``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Callable, Sequence

COMPLETE = "COMPLETE"  # written last into a cached build: its presence means the build finished


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def repository_digest(onnx_repository: Path, build_args: Sequence[str]) -> str:
    """sha256 over the ONNX repository's files (paths, sizes and contents) and the build flags."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(onnx_repository).rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(onnx_repository)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    h.update("\0".join(build_args).encode())
    return h.hexdigest()[:16]


def cache_key(gpu_name: str, tensorrt_version: str, digest: str) -> str:
    """``<gpu>/trt-<version>/<digest>``, e.g. ``nvidia-a100-sxm4-80gb/trt-10.5.0/3f2a...``."""
    return f"{_slug(gpu_name)}/trt-{_slug(tensorrt_version)}/{digest}"


def gpu_name() -> str:
    """The name of the GPU this pod was given (``nvidia.com/gpu: 1``: device 0)."""
    done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[0]


def tensorrt_version() -> str:
    import tensorrt  # the gpu extra's pinned release

    return tensorrt.__version__


def export_tensorrt_builder(source: Path, target: Path, build_args: Sequence[str]) -> None:
    """Build ``target`` from ``source`` with ``python -m export.tensorrt`` (what an operator would run)."""
    command = [sys.executable, "-m", "export.tensorrt", "--source", str(source), "--target", str(target), *build_args]
    subprocess.run(command, check=True)


def ensure_cached(
    onnx_repository: Path,
    cache: Path,
    key: str,
    build_args: Sequence[str],
    builder: Callable[[Path, Path, Sequence[str]], None] = export_tensorrt_builder,
) -> tuple[Path, bool]:
    """The cached repository for ``key`` (built now if missing) and whether this call built it."""
    entry = Path(cache) / key
    if (entry / COMPLETE).is_file():
        return entry / "repository", False
    staging = entry.parent / f".{entry.name}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        builder(Path(onnx_repository), staging / "repository", build_args)
        (staging / COMPLETE).write_text(key + "\n")
        try:
            staging.rename(entry)  # atomic on one file system; fails if another pod finished first
        except OSError:
            if not (entry / COMPLETE).is_file():
                raise
            return entry / "repository", False
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return entry / "repository", True


def link(target: Path, link_path: Path) -> None:
    link_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = link_path.with_name(link_path.name + ".tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link_path)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1:]
    p = argparse.ArgumentParser(prog="python -m export.deploy.engine_cache", description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", type=Path, required=True, help="the ONNX Runtime repository (python -m export)")
    p.add_argument("--cache", type=Path, required=True, help="the engine cache volume")
    p.add_argument("--link", type=Path, required=True, help="symlink to create to the cached repository")
    p.add_argument("--backend", default="python-trt", help="export.tensorrt --backend")
    p.add_argument("--unet-instances", type=int, default=2, help="export.tensorrt --unet-instances")
    p.add_argument("--accept-rate", type=float, help="export.tensorrt --accept-rate")
    p.add_argument("--gpu-name", help="default: nvidia-smi's name of device 0")
    p.add_argument("--tensorrt-version", help="default: the installed tensorrt's")
    args = p.parse_args(argv)
    build_args = ["--backend", args.backend, "--unet-instances", str(args.unet_instances)]
    if args.accept_rate is not None:
        build_args += ["--accept-rate", str(args.accept_rate)]
    build_args += extra
    key = cache_key(args.gpu_name or gpu_name(), args.tensorrt_version or tensorrt_version(), repository_digest(args.onnx, build_args))
    repository, built = ensure_cached(args.onnx, args.cache, key, build_args, export_tensorrt_builder)
    link(repository, args.link)
    print(f"{'built' if built else 'cached'}: {repository} -> {args.link}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
