"""The pod's engine init step: one build per GPU model, TensorRT release, model and build flags, shared
through the cache volume; a complete build is found, a changed input builds anew, a race has one winner."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.deploy.engine_cache import COMPLETE, cache_key, ensure_cached, link, main, repository_digest


def onnx_repo(tmp_path: Path, content: bytes = b"graph") -> Path:
    repo = tmp_path / "onnx"
    (repo / "unet_student" / "1").mkdir(parents=True, exist_ok=True)
    (repo / "unet_student" / "1" / "model.onnx").write_bytes(content)
    return repo


class CountingBuilder:
    def __init__(self) -> None:
        self.calls: list[tuple[Path, Path, list[str]]] = []

    def __call__(self, source: Path, target: Path, args) -> None:
        self.calls.append((source, target, list(args)))
        (target / "unet_student" / "1").mkdir(parents=True)
        (target / "unet_student" / "1" / "model.plan").write_bytes(b"plan")


def test_the_key_names_the_gpu_the_tensorrt_release_and_the_inputs(tmp_path):
    repo = onnx_repo(tmp_path)
    digest = repository_digest(repo, ["--backend", "python-trt"])
    assert cache_key("NVIDIA A100-SXM4-80GB", "10.5.0", digest) == f"nvidia-a100-sxm4-80gb/trt-10.5.0/{digest}"
    assert cache_key("NVIDIA H100 80GB HBM3", "10.5.0", digest) != cache_key("NVIDIA A100-SXM4-80GB", "10.5.0", digest)
    assert repository_digest(repo, ["--backend", "tensorrt"]) != digest  # other flags, other engines
    onnx_repo(tmp_path, b"another graph")
    assert repository_digest(repo, ["--backend", "python-trt"]) != digest  # another model, other engines


def test_the_first_pod_builds_and_the_next_finds_the_build(tmp_path):
    repo, cache, builder = onnx_repo(tmp_path), tmp_path / "cache", CountingBuilder()
    first, built = ensure_cached(repo, cache, "gpu/trt-10.5.0/abc", ["--backend", "python-trt"], builder)
    assert built and len(builder.calls) == 1
    assert (first / "unet_student" / "1" / "model.plan").read_bytes() == b"plan"
    assert (first.parent / COMPLETE).is_file()
    again, built = ensure_cached(repo, cache, "gpu/trt-10.5.0/abc", ["--backend", "python-trt"], builder)
    assert again == first and not built and len(builder.calls) == 1
    assert [p.name for p in first.parent.parent.iterdir()] == ["abc"]  # no staging folder left behind


def test_a_failed_build_leaves_nothing_a_later_pod_would_serve(tmp_path):
    repo, cache = onnx_repo(tmp_path), tmp_path / "cache"

    def failing(source, target, args):
        target.mkdir(parents=True)
        raise RuntimeError("engine build failed")

    with pytest.raises(RuntimeError):
        ensure_cached(repo, cache, "gpu/trt/abc", [], failing)
    assert list((cache / "gpu" / "trt").iterdir()) == []
    _, built = ensure_cached(repo, cache, "gpu/trt/abc", [], CountingBuilder())
    assert built


def test_a_pod_that_loses_the_race_serves_the_winners_build(tmp_path):
    repo, cache = onnx_repo(tmp_path), tmp_path / "cache"
    winner = CountingBuilder()

    def racing(source, target, args):
        # Another pod completes the same key while this one builds.
        ensure_cached(source, cache, "gpu/trt/abc", args, winner)
        CountingBuilder()(source, target, args)

    repository, built = ensure_cached(repo, cache, "gpu/trt/abc", [], racing)
    assert not built and len(winner.calls) == 1 and (repository.parent / COMPLETE).is_file()
    assert [p.name for p in (cache / "gpu" / "trt").iterdir()] == ["abc"]


def test_the_link_points_the_server_at_the_cached_repository(tmp_path):
    target = tmp_path / "cache" / "repository"
    target.mkdir(parents=True)
    link(target, tmp_path / "serving" / "repository")
    link(target, tmp_path / "serving" / "repository")  # a restarted init step replaces it
    assert (tmp_path / "serving" / "repository").resolve() == target.resolve()


def test_the_command_line_passes_the_build_flags_into_the_key(tmp_path, monkeypatch, capsys):
    repo = onnx_repo(tmp_path)
    builder = CountingBuilder()
    monkeypatch.setattr("export.deploy.engine_cache.export_tensorrt_builder", builder)
    argv = ["--onnx", str(repo), "--cache", str(tmp_path / "cache"), "--link", str(tmp_path / "serving" / "repository"),
            "--unet-instances", "4", "--accept-rate", "0.5", "--gpu-name", "NVIDIA H100 80GB HBM3", "--tensorrt-version", "10.5.0"]  # fmt: skip
    assert main(argv) == 0
    (_, _, args), = builder.calls
    assert args == ["--backend", "python-trt", "--unet-instances", "4", "--accept-rate", "0.5"]
    assert "nvidia-h100-80gb-hbm3/trt-10.5.0/" in capsys.readouterr().out
