"""FP16 TensorRT engines and the GPU repository, specified on CPU.

Without tensorrt the build plan still constructs, so its profiles and builder flags are checked
here; configs are parsed with Triton's own ModelConfig proto; engine validation is exercised with
two ONNX Runtime runners. Tests that need tensorrt and a GPU carry ``@pytest.mark.gpu`` and skip
with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import types
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.backend.trt import NetworkFromOnnxPath
from polygraphy.exception import PolygraphyException
from tritonclient.grpc import model_config_pb2 as mc

from bll_python.layout import BLS_MODEL, assets_dir, model_dir, onnx_path, plan_path, read_server_args, version_dir
from bll_python.precision import Tolerance
from bll_python.specs import image_reward_spec, unet_spec, vae_decoder_spec
from export.tensorrt.availability import tensorrt_unavailable_reason
from export.tensorrt.lint import lint_onnx
from export.tensorrt.plan import profile_shapes, repository_builds, trt_profile
from export.tensorrt.precision import FP32_RULES
from export.tensorrt.validate import compare_output, compare_runners, validation_feeds, write_report
from export.triton.configs import component_config, gpu_bls_config, tensorrt_component_config
from export.triton.model_files import ORT_TEMPLATE, TRT_TEMPLATE
from export.triton.placement import Placement, teacher_share
from export.triton.tensorrt import MIN_CUDA_POOL_BYTES, bls_instance_pool_bytes, cuda_pool_bytes, write_tensorrt_repository


def _gpu_skip_reason() -> str | None:
    """What is missing for the GPU tests, e.g. "needs tensorrt (pip install -e .[gpu] ...) and an NVIDIA GPU"."""
    return tensorrt_unavailable_reason()


requires_gpu = pytest.mark.skipif(_gpu_skip_reason() is not None, reason=_gpu_skip_reason() or "")
no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")

UNETS = ("unet_student", "unet_teacher")


@pytest.fixture(scope="module")
def specs(deployment):
    return deployment.specs()


@pytest.fixture(scope="module")
def builds(tiny_repository, specs, tmp_path_factory):
    target = tmp_path_factory.mktemp("trt") / "repository"
    return repository_builds(tiny_repository, specs, target)


def _parse(config: str | mc.ModelConfig) -> mc.ModelConfig:
    # The writers build ModelConfig protobufs; the files they write are parsed back the same way.
    return config if isinstance(config, mc.ModelConfig) else text_format.Parse(config, mc.ModelConfig())


# ---------------------------------------------------------------------------------------------
# Profiles


def test_profile_rows_are_the_spec_at_min_opt_max(specs, deployment):
    for name, spec in specs.items():
        rows = profile_shapes(spec)
        assert list(rows) == spec.input_names
        for which, index in (("min", 0), ("opt", 1), ("max", 2)):
            assert {n: r[index] for n, r in rows.items()} == spec.input_shapes(which)
        for tensor in spec.inputs:
            lo, opt, hi = rows[tensor.name]
            assert (lo[0], hi[0]) == (1, spec.max_batch), f"{name}.{tensor.name}: batch runs 1..max"
            # Besides the batch, only the image sides (per-request height/width) vary, over the
            # deployment's size range; every other dim is fixed.
            fixed = [i for i, d in enumerate(tensor.dims) if not isinstance(d, str)]
            assert [lo[i] for i in fixed] == [opt[i] for i in fixed] == [hi[i] for i in fixed], f"{name}.{tensor.name}"
            for i, d in enumerate(tensor.dims):
                if d in ("latent_height", "latent_width", "image_height", "image_width"):
                    scale = 1 if d.startswith("image") else deployment.vae_scale
                    assert (lo[i] * scale, opt[i] * scale, hi[i] * scale) == (deployment.min_image_size, deployment.image_size, deployment.max_image_size)


def test_unet_and_text_encoder_profiles_hold_the_cfg_doubled_batch(specs, deployment):
    rows = deployment.max_rows
    for name in (*UNETS, "text_encoder"):
        assert profile_shapes(specs[name])[specs[name].input_names[0]][2][0] == 2 * rows, name
    for name in ("vae_decoder", "image_reward"):
        assert profile_shapes(specs[name])[specs[name].input_names[0]][2][0] == rows, name


def test_polygraphy_profile_carries_the_same_shapes(specs):
    spec = specs["unet_student"]
    profile = trt_profile(spec)
    for name, (lo, opt, hi) in profile_shapes(spec).items():
        assert (tuple(profile[name].min), tuple(profile[name].opt), tuple(profile[name].max)) == (lo, opt, hi)


# ---------------------------------------------------------------------------------------------
# The build plan


def test_build_plan_is_a_strongly_typed_build_of_the_fp16_graph_with_cache_and_level(builds, tiny_repository, specs):
    assert set(builds) == set(specs)
    caches = set()
    for name, build in builds.items():
        config = build.config
        # The FP16 plan is in the graph: no precision flags, which a strongly typed network rejects
        # and TensorRT 11 no longer has.
        assert config.fp16 is False and config.precision_constraints is None
        assert config.builder_optimization_level == 3
        assert config.profiling_verbosity is None, "None is Polygraphy's DETAILED: the engine inspector needs it"
        assert config.timing_cache_path == str(build.timing_cache)
        assert build.engine.timing_cache_path == str(build.timing_cache), "the cache is saved back after the build"
        assert config.profiles == [build.profile]
        assert isinstance(build.network, NetworkFromOnnxPath) and build.network.strongly_typed is True
        assert build.network.path == str(build.fp16_onnx) and build.onnx == onnx_path(tiny_repository, name)
        assert build.plan.name == "model.plan"
        assert build.rules == FP32_RULES[name]
        assert json.loads(json.dumps(build.describe()))["strongly_typed"] is True
        caches.add(build.timing_cache)
    assert len(caches) == 1, "one persistent timing cache shared by all engines"
    served = builds["vae_decoder"].plan.parents[2]
    assert not next(iter(caches)).is_relative_to(served), "the cache is not served"
    assert not builds["vae_decoder"].fp16_onnx.is_relative_to(served), "nor are the FP16 graphs"
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt" not in sys.modules


@no_tensorrt
def test_calling_the_plan_without_tensorrt_raises_polygraphy_exception(builds, monkeypatch):
    import polygraphy.config

    monkeypatch.setattr(polygraphy.config, "AUTOINSTALL_DEPS", False)
    build = builds["vae_decoder"]
    with pytest.raises(PolygraphyException, match=r"needs tensorrt \(pip install -e \.\[gpu\]"):
        build()
    # The bare Polygraphy chain fails the same way (the contract DESIGN.md records).
    with pytest.raises(PolygraphyException, match="tensorrt"):
        build.engine()
    assert not build.plan.exists()


def test_the_fp16_graph_of_a_build_is_written_without_a_gpu(builds):
    build = builds["unet_student"]
    plan = build.write_fp16_graph()
    assert build.fp16_onnx.is_file() and plan.onnx == build.fp16_onnx
    assert "/unet/time_proj/Sin" in plan.selection.nodes and plan.island_tensors


# ---------------------------------------------------------------------------------------------
# config.pbtxt


def _tensors(config: mc.ModelConfig, kind: str) -> list[tuple]:
    return [(t.name, t.data_type, list(t.dims), t.HasField("reshape"), list(t.reshape.shape)) for t in getattr(config, kind)]


def test_tensorrt_config_is_a_gpu_plan_with_the_specs_tensors(specs):
    for name, spec in specs.items():
        config = _parse(tensorrt_component_config(spec, instances=2, gpus=[0]))
        reference = _parse(component_config(spec))
        assert config.name == name and config.platform == "tensorrt_plan" and not config.backend
        assert config.max_batch_size == spec.max_batch
        assert _tensors(config, "input") == _tensors(reference, "input")
        assert _tensors(config, "output") == _tensors(reference, "output")
        assert [t.name for t in config.input] == spec.input_names and [t.name for t in config.output] == spec.output_names
        assert config.HasField("dynamic_batching")
        (group,) = config.instance_group
        assert (group.kind, group.count, list(group.gpus)) == (mc.ModelInstanceGroup.KIND_GPU, 2, [0])
        assert not config.parameters
    timestep = _parse(tensorrt_component_config(specs["unet_student"])).input[1]
    assert (timestep.name, list(timestep.dims), list(timestep.reshape.shape)) == ("timestep", [1], []), "per-row scalar: [B, 1] on the wire, [B] in the engine"


def test_python_trt_config_runs_the_plan_from_the_python_backend(specs):
    config = _parse(tensorrt_component_config(specs["vae_decoder"], backend="python-trt"))
    assert config.backend == "python" and not config.platform
    assert config.parameters["plan_file"].string_value == "model.plan"
    assert config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    with pytest.raises(ValueError, match="backend"):
        tensorrt_component_config(specs["vae_decoder"], backend="onnxruntime")


def test_gpu_bls_config_keeps_tensors_on_the_gpu(deployment):
    config = _parse(gpu_bls_config(deployment, instances=2, gpus=[1]))
    assert config.name == BLS_MODEL and config.backend == "python"
    params = {k: v.string_value for k, v in config.parameters.items()}
    # On top of the CPU BLS parameters (e.g. component_timeout_ms), the GPU ones:
    assert params["FORCE_CPU_ONLY_INPUT_TENSORS"] == "no" and params["device"] == "cuda"
    (group,) = config.instance_group
    assert (group.kind, group.count, list(group.gpus)) == (mc.ModelInstanceGroup.KIND_GPU, 2, [1])
    # One request per execution, as on the CPU: components merge the concurrent instances' calls. The
    # BLS's batcher only bounds its queue (admission control).
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [1] and batching.max_queue_delay_microseconds == 0
    assert batching.default_queue_policy.max_queue_size >= 2


# ---------------------------------------------------------------------------------------------
# Repository layout


def _fake_plans(source: Path, target: Path, names) -> None:
    shutil.copytree(model_dir(source, BLS_MODEL), model_dir(target, BLS_MODEL))
    for name in names:
        version_dir(target, name).mkdir(parents=True)
        plan_path(target, name).write_bytes(b"not an engine")
        shutil.copyfile(ORT_TEMPLATE, version_dir(target, name) / "model.py")  # left over from an ORT layout


def test_tensorrt_repository_layout(tiny_repository, deployment, tmp_path):
    target = tmp_path / "repository"
    _fake_plans(tiny_repository, target, deployment.specs())
    written = write_tensorrt_repository(target, deployment, placement=Placement(unet_teacher=2))
    for name in deployment.specs():
        files = sorted(p.name for p in version_dir(target, name).iterdir())
        assert files == ["model.plan"], f"{name}: only the plan next to a tensorrt_plan config, got {files}"
        assert _parse((model_dir(target, name) / "config.pbtxt").read_text()).platform == "tensorrt_plan"
    assert _parse((model_dir(target, "unet_teacher") / "config.pbtxt").read_text()).instance_group[0].count == 2
    bls = _parse((model_dir(target, BLS_MODEL) / "config.pbtxt").read_text())
    assert bls.parameters["device"].string_value == "cuda"
    assert (version_dir(target, BLS_MODEL) / "model.py").is_file() and (assets_dir(target) / "deployment.json").is_file()
    assert read_server_args(target) == written.server_args == [f"--cuda-memory-pool-byte-size=0:{written.cuda_pool_bytes}"]
    assert read_server_args(tiny_repository) == [], "an ONNX Runtime repository needs no extra flags"


def test_python_trt_repository_places_the_template(tiny_repository, deployment, tmp_path):
    target = tmp_path / "repository"
    _fake_plans(tiny_repository, target, deployment.specs())
    write_tensorrt_repository(target, deployment, backend="python-trt", gpus=[0])
    for name in deployment.specs():
        assert (version_dir(target, name) / "model.py").read_bytes() == TRT_TEMPLATE.read_bytes()
        assert _parse((model_dir(target, name) / "config.pbtxt").read_text()).backend == "python"


def test_missing_plan_is_named(tiny_repository, deployment, tmp_path):
    target = tmp_path / "repository"
    _fake_plans(tiny_repository, target, [n for n in deployment.specs() if n != "vae_decoder"])
    with pytest.raises(FileNotFoundError, match=r"vae_decoder/1/model.plan"):
        write_tensorrt_repository(target, deployment)


def test_python_trt_template_imports_without_tensorrt_and_refuses_cpu_instances(monkeypatch):
    class TritonModelException(Exception):
        pass

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.SimpleNamespace(TritonModelException=TritonModelException))
    spec = importlib.util.spec_from_file_location("tensorrt_component_model", TRT_TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt" not in sys.modules
    args = {"model_config": json.dumps({"name": "vae_decoder", "input": [], "output": []}), "model_instance_kind": "CPU"}
    with pytest.raises(TritonModelException, match="KIND_GPU"):
        module.TritonPythonModel().initialize(args)


# ---------------------------------------------------------------------------------------------
# Placement and server flags


def test_teacher_share_follows_the_accept_rate():
    assert teacher_share(1.0, 4, 10) == 0.0
    assert teacher_share(0.6, 4, 10) == pytest.approx(0.5)
    assert teacher_share(0.6, 4, 10, cost_ratio=2.0) == pytest.approx(8 / 12)
    assert Placement.from_accept_rate(0.6, student_steps=4, teacher_steps=10, unet_instances=4) == Placement(unet_student=2, unet_teacher=2, bls=8)
    assert Placement.from_accept_rate(1.0, student_steps=4, teacher_steps=10, unet_instances=4).unet_teacher == 1, "the teacher keeps one instance"
    assert Placement.from_accept_rate(0.0, student_steps=1, teacher_steps=50, unet_instances=4).unet_student == 1, "so does the student"
    with pytest.raises(ValueError):
        teacher_share(1.5, 4, 10)


def test_gpu_unets_wait_briefly_for_a_batch_of_their_profiles_opt_size(specs):
    for name in ("unet_student", "unet_teacher"):
        batching = _parse(tensorrt_component_config(specs[name])).dynamic_batching
        assert list(batching.preferred_batch_size) == [specs[name].profile["B"].opt]
        assert 0 < batching.max_queue_delay_microseconds <= 1000


def _sd15_specs(rows: int = 8) -> dict:
    from bll_python.specs import text_encoder_spec

    latents = dict(latent_channels=4, latent_size=64, seq_len=77, text_hidden=768)
    return {
        "text_encoder": text_encoder_spec(seq_len=77, hidden=768, max_batch=2 * rows),
        "unet_student": unet_spec("unet_student", max_batch=2 * rows, **latents),
        "unet_teacher": unet_spec("unet_teacher", max_batch=2 * rows, **latents),
        "vae_decoder": vae_decoder_spec(latent_channels=4, latent_size=64, scale=8, max_batch=rows),
        "image_reward": image_reward_spec(image_size=512, text_len=35, max_batch=rows),
    }


def test_cuda_pool_holds_each_bls_instances_request_tensors_and_two_calls(specs):
    assert cuda_pool_bytes(specs) == MIN_CUDA_POOL_BYTES, "the tiny preset fits the floor"
    sd15 = _sd15_specs()
    # Held for a whole request: CFG text embeddings [16, 77, 768], the student's and the teacher's
    # decoded images [8, 3, 512, 512], the scores [8]; all FP32.
    held = 16 * 77 * 768 * 4 + 2 * 8 * 3 * 512 * 512 * 4 + 8 * 4
    # Largest call: the VAE decoder, latents [8, 4, 64, 64] in, image [8, 3, 512, 512] out.
    largest = 8 * 4 * 64 * 64 * 4 + 8 * 3 * 512 * 512 * 4
    assert bls_instance_pool_bytes(sd15) == held + 2 * largest
    for instances in (1, 2, 4, 8):
        pool = cuda_pool_bytes(sd15, instances)
        assert pool >= instances * (held + 2 * largest) and pool % 2**26 == 0, f"{instances} BLS instances"
    assert cuda_pool_bytes(sd15, 8) > cuda_pool_bytes(sd15, 4) > cuda_pool_bytes(sd15, 1)


def test_repository_sizes_the_pool_for_its_bls_instance_count(tiny_repository, deployment, tmp_path):
    target = tmp_path / "repository"
    _fake_plans(tiny_repository, target, deployment.specs())
    for bls in (1, 3):
        written = write_tensorrt_repository(target, deployment, placement=Placement(bls=bls))
        assert written.cuda_pool_bytes == cuda_pool_bytes(deployment.specs(), bls)


# ---------------------------------------------------------------------------------------------
# Validation (Polygraphy comparator) and lint


class _Shifted(OnnxrtRunner):
    """ORT plus a constant: what a mis-built engine looks like to the comparator."""

    def __init__(self, session, name, shift):
        super().__init__(session, name=name)
        self.shift = shift

    def infer_impl(self, feed_dict):
        return {k: v + self.shift for k, v in super().infer_impl(feed_dict).items()}


def _ort(path: Path, name: str = "onnxruntime"):
    return OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]), name=name)


def test_comparator_report_passes_identical_runtimes_and_catches_drift_and_overflow(tiny_repository, specs, tmp_path):
    spec, path = specs["vae_decoder"], onnx_path(tiny_repository, "vae_decoder")
    feeds = validation_feeds(spec, batches=[1, 2])
    same = compare_runners(spec, _ort(path), _ort(path, "tensorrt"), feeds)
    assert same.passed and [it["batch"] for it in same.iterations] == [1, 2]
    assert same.iterations[0]["outputs"]["image"].max_absdiff == 0.0
    drift = compare_runners(spec, _ort(path), _Shifted(SessionFromOnnx(str(path)), "tensorrt", 0.1), feeds, Tolerance(2e-2, 2e-2, "test"))
    assert not drift.passed and drift.iterations[0]["outputs"]["image"].max_absdiff == pytest.approx(0.1, rel=1e-3)
    overflow = compare_runners(spec, _ort(path), _Shifted(SessionFromOnnx(str(path)), "tensorrt", np.float32(np.nan)), feeds[:1])
    assert not overflow.passed and overflow.iterations[0]["outputs"]["image"].finite is False
    report = json.loads(write_report([same, drift, overflow], tmp_path / "validation.json").read_text())
    assert report["passed"] is False
    assert report["components"]["vae_decoder"]["tolerance"]["atol"] > 0


def test_relative_error_is_taken_against_the_fp32_reference():
    tol = Tolerance(atol=0.0, rtol=0.6, why="test")
    # Engine 1.0 where the reference says 2.0: 50 % off the reference (Polygraphy's comparator
    # divides by the engine's output and would call it 100 %).
    diff = compare_output(np.array([2.0, 10.0], np.float32), np.array([1.0, 10.0], np.float32), tol)
    assert diff.max_reldiff == pytest.approx(0.5, rel=1e-5) and diff.passed
    assert not compare_output(np.array([2.0]), np.array([1.0]), Tolerance(0.0, 0.4, "test")).passed
    # An element passes when it is within either bound, fails only beyond both.
    both = compare_output(np.array([0.0, 100.0]), np.array([0.01, 101.0]), Tolerance(0.02, 0.02, "test"))
    assert both.passed and both.failing == 0
    assert compare_output(np.array([0.0]), np.array([0.05]), Tolerance(0.02, 0.02, "test")).failing == 1
    assert not compare_output(np.array([1.0]), np.array([np.inf]), Tolerance(1e9, 1e9, "test")).passed, "inf always fails"


def test_onnx_graphs_pass_polygraphy_lint(tiny_repository, specs):
    for name, spec in specs.items():
        result = lint_onnx(onnx_path(tiny_repository, name), spec.input_shapes("opt"))
        assert result.passed, f"{name}: {result.errors[:5]}"


# ---------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("component", ["text_encoder", "unet_student", "vae_decoder", "image_reward"])
def test_fp16_engine_matches_onnxruntime(component, builds, specs, tiny_repository):
    from export.tensorrt.validate import validate_engine

    result = builds[component]()
    assert result.plan.stat().st_size > 0 and result.precision.passed, result.precision.summary()
    report = validate_engine(specs[component], onnx_path(tiny_repository, component), result.plan)
    assert report.passed, str(report)
