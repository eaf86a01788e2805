"""The GPU path's install and device handling, specified without a GPU: the TensorRT pin and the
ONNX Runtime flavour (pyproject and the installed environment), the python-trt component model's
device and stream handling with fake tensors, and the BLS's CUDA device.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import tomllib
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from bll_python.specs import vae_decoder_spec
from bll_python.triton_engines import TritonEngine, use_cuda_device
from export.tensorrt.availability import ONNXRUNTIME_FLAVOURS, installed_onnxruntime_flavours, tensorrt_version_problem
from export.tensorrt.releases import NESTED_JSON_FIX, SERVING, TENSORRT_PIN
from export.triton.model_files import TRT_TEMPLATE

ROOT = Path(__file__).resolve().parent.parent


def _requirements() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"base": project["dependencies"], **project["optional-dependencies"]}


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower()


# ---------------------------------------------------------------------------------------------
# Items 1 and 5: what gets installed


def test_gpu_extra_pins_the_tensorrt_of_the_serving_container():
    gpu = _requirements()["gpu"]
    assert f"tensorrt-cu12=={TENSORRT_PIN}" in gpu, "an open range resolves to TensorRT 11, whose engines the 24.10 container cannot load"
    assert TENSORRT_PIN.startswith("10."), "the serving container's TensorRT is a 10.x release"
    doc = (ROOT / "export" / "TENSORRT.md").read_text()
    for fact in (TENSORRT_PIN, f"{SERVING.container}", SERVING.triton, NESTED_JSON_FIX.container, NESTED_JSON_FIX.triton):
        assert fact in doc, f"export/TENSORRT.md names {fact}"


def test_no_install_puts_two_onnxruntime_flavours_side_by_side():
    requirements = _requirements()
    base = {_name(r) for r in requirements["base"]}
    for extra, reqs in requirements.items():
        names = base | {_name(r) for r in reqs}
        flavours = sorted(names & set(ONNXRUNTIME_FLAVOURS))
        assert len(flavours) == 1, f"base + {extra} installs {flavours}: each writes the onnxruntime package over the other"


def test_this_environment_has_one_onnxruntime_flavour():
    assert installed_onnxruntime_flavours() == ["onnxruntime"]


def test_engines_must_be_built_by_the_serving_containers_tensorrt():
    assert tensorrt_version_problem(TENSORRT_PIN) is None
    assert tensorrt_version_problem(TENSORRT_PIN + ".18") is None, "the container's build number is the same release"
    problem = tensorrt_version_problem("11.1.0")
    assert problem and TENSORRT_PIN in problem and SERVING.container in problem
    assert tensorrt_version_problem("10.6.0")


# ---------------------------------------------------------------------------------------------
# Items 6 and 7: the python-trt component model, with fake tensors and a fake engine


class _Stream:
    cuda_stream = 0

    def __init__(self) -> None:
        self.synchronized = 0

    def synchronize(self) -> None:
        self.synchronized += 1


class _Context:
    def __init__(self, ok: bool = True) -> None:
        self.ok, self.shapes = ok, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name, address):
        pass

    def get_tensor_shape(self, name):
        return (self.shapes["latent"][0], 3, 4, 4)

    def execute_async_v3(self, stream):
        return self.ok


class _PbTensor:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def is_cpu(self) -> bool:
        return True

    def as_numpy(self) -> np.ndarray:
        return self.array


def _fake_pb(responses: list) -> types.SimpleNamespace:
    class TritonError(Exception):
        def __init__(self, message):
            super().__init__(message)
            self.message = message

    def response(output_tensors=None, error=None):
        r = types.SimpleNamespace(output_tensors=output_tensors, error=error)
        responses.append(r)
        return r

    return types.SimpleNamespace(
        TritonModelException=RuntimeError,
        TritonError=TritonError,
        InferenceResponse=response,
        Tensor=types.SimpleNamespace(from_dlpack=lambda name, capsule: (name, torch.utils.dlpack.from_dlpack(capsule))),
        get_input_tensor_by_name=lambda request, name: request[name],
        Logger=types.SimpleNamespace(log_error=lambda message: None),
    )


@pytest.fixture
def trt_model(monkeypatch):
    """The template's model with fakes where CUDA would be: device ``cpu``, a recording stream."""
    responses: list = []
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb(responses))
    spec = importlib.util.spec_from_file_location("tensorrt_component_model_gpu_path", TRT_TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.name, model.device = "vae_decoder", torch.device("cpu")
    model.inputs, model.outputs = ["latent"], ["image"]
    model.dtypes = {"latent": torch.float16, "image": torch.float32}
    model.engine_dims = {"latent": (-1, 4, 2, 2)}
    model.stream, model.context = _Stream(), _Context()
    model._on_stream = contextlib.nullcontext
    return model, responses


def test_each_requests_input_moves_to_the_gpu_before_the_batch_is_joined(trt_model):
    model, _ = trt_model
    model.device = torch.device("meta")  # stands in for the GPU: a second device the host tensors must move to
    host, device = torch.ones(1, 4, 2, 2), torch.ones(2, 4, 2, 2, device="meta")
    with pytest.raises(RuntimeError):
        torch.cat([host, device])  # what joining before moving did with mixed-device requests
    joined = model._as_engine_input("latent", [host, device])
    assert joined.device.type == "meta" and joined.shape == (3, 4, 2, 2) and joined.dtype == torch.float16


def test_outputs_are_split_per_request_after_the_stream_is_finished(trt_model):
    model, responses = trt_model
    requests = [{"latent": _PbTensor(np.ones((n, 4, 2, 2), np.float32))} for n in (1, 2)]
    model.execute(requests)
    assert model.stream.synchronized == 1
    assert [r.error for r in responses] == [None, None]
    assert [r.output_tensors[0][1].shape[0] for r in responses] == [1, 2]


def test_a_failed_execution_waits_for_its_stream_before_answering(trt_model):
    model, responses = trt_model
    model.context = _Context(ok=False)
    model.execute([{"latent": _PbTensor(np.ones((1, 4, 2, 2), np.float32))}])
    assert model.stream.synchronized == 1, "copies may still read the request buffers Triton reuses after the response"
    assert "execute_async_v3 failed" in responses[0].error.message


# ---------------------------------------------------------------------------------------------
# Item 8: the BLS's CUDA device and its tensors into the stub


def test_the_bls_makes_its_instance_gpu_the_current_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(device))
    use_cuda_device("cuda:1")
    use_cuda_device("cpu")
    assert calls == [torch.device("cuda:1")]
    bls = (ROOT / "model_repository" / "adaptive_diffusion" / "1" / "model.py").read_text()
    assert bls.index("use_cuda_device(device)") < bls.index("engines = triton_engines("), "before any GPU work"


def test_gpu_tensors_go_to_the_stub_as_dlpack_producers_not_capsules():
    sent = []
    pb = types.SimpleNamespace(
        PreferredMemory=lambda kind, device: (kind, device),
        TRITONSERVER_MEMORY_GPU="gpu",
        Tensor=types.SimpleNamespace(from_dlpack=lambda name, value: sent.append((name, value))),
    )
    engine = TritonEngine(pb, vae_decoder_spec(latent_channels=4, latent_size=2, scale=2, max_batch=2), device="cuda:1")
    assert engine.request_kwargs["preferred_memory"] == ("gpu", 1)
    engine._tensor("latent", torch.ones(1, 4, 2, 2, device="meta"))
    (name, value), = sent
    # A producer object: the stub calls its __dlpack__(stream=...) and so waits for torch's work on it.
    assert name == "latent" and isinstance(value, torch.Tensor) and hasattr(value, "__dlpack__")
