"""Server-free stand-ins: cheap deterministic engines, a small deployment, and a fake ``pb_utils``.

They let the serving layer (``BatchRunner``, the BLS ``execute``) and the pipeline's gate run in
milliseconds with the real ``AdaptivePipeline``, real diffusers schedulers and real tokenizers.
Every fake engine computes each output row from its own input row only, as a real model does, so
"a row equals that row generated alone with its own settings" is an exact statement here.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bll_python.deployment import Calibration, Deployment, SchedulerRecipe
from bll_python.engines import ComponentError, Engines, run_in_chunks
from bll_python.inprocess import load_tokenizers
from bll_python.layout import BLS_MODEL, assets_dir, clip_tokenizer_dir, reward_vocab
from bll_python.pipeline import AdaptivePipeline
from bll_python.settings import GenerationSettings
from bll_python.specs import BATCH, ComponentSpec

ROOT = Path(__file__).resolve().parent.parent
BLS_SOURCE = ROOT / "model_repository" / BLS_MODEL / "1" / "model.py"

# Two rows per pipeline batch, so that chunking shows with a handful of requests.
MAX_ROWS = 2
TEXT_HIDDEN = 4
LATENT_CHANNELS, LATENT_SIZE, VAE_SCALE = 4, 4, 2


def _scheduler_recipes() -> tuple[SchedulerRecipe, SchedulerRecipe]:
    from diffusers import DPMSolverMultistepScheduler, LCMScheduler

    def recipe(scheduler) -> SchedulerRecipe:
        return SchedulerRecipe(type(scheduler).__name__, {k: v for k, v in scheduler.config.items() if not k.startswith("_")})

    return recipe(LCMScheduler()), recipe(DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2))


def fake_deployment(percentiles: list[float] | None = None) -> Deployment:
    """A deployment of the fake engines; ``percentiles`` (101 values) give it a calibration."""
    student, teacher = _scheduler_recipes()
    calibration = Calibration(percentiles=list(percentiles), prompts=101, settings={}) if percentiles is not None else None
    return Deployment(
        preset="fake",
        student_kind="cd",
        seq_len=77,  # the real CLIP tokenizer's length
        text_hidden=TEXT_HIDDEN,
        latent_channels=LATENT_CHANNELS,
        latent_size=LATENT_SIZE,
        vae_scale=VAE_SCALE,
        reward_text_len=35,
        max_rows=MAX_ROWS,
        student_scheduler=student,
        teacher_scheduler=teacher,
        defaults=GenerationSettings(guidance_scale=7.5, student_steps=2, teacher_steps=2, sigma=0.7, strategy="refine"),
        calibration=calibration,
    )


# ---------------------------------------------------------------------------------------------
# engines


def _per_row(x: torch.Tensor, ndim: int) -> torch.Tensor:
    return x.reshape(x.shape[0], *([1] * (ndim - 1)))


@dataclass
class FakeEngine:
    """One component: a row-wise function, the rows of every call, and faults on demand."""

    spec: ComponentSpec
    fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    calls: list[int] = field(default_factory=list)
    fail: str | None = None  # a message: every call raises ComponentError with it
    after_call: Callable[["FakeEngine"], None] | None = None

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Recorded before chunking: what the pipeline asked for in one call.
        self.calls.append(int(next(iter(inputs.values())).shape[0]))
        for t in self.spec.inputs:
            assert t.name in inputs, f"{self.spec.name}: missing {t.name}"
        if self.fail is not None:
            raise ComponentError(self.spec.name, self.fail)
        # Chunked to the spec's max batch, as every real engine does.
        out = run_in_chunks(self.spec, inputs, self.fn)
        if self.after_call:
            self.after_call(self)
        return out

    @property
    def rows(self) -> int:
        return sum(self.calls)


def _text_encoder(inputs):
    ids = inputs["input_ids"].to(torch.float32)
    scale = torch.arange(1, TEXT_HIDDEN + 1, dtype=torch.float32)
    return {"text_embeddings": torch.sin(ids[..., None] * scale * 0.01)}


def _unet(gain: float):
    def run(inputs):
        x = inputs["sample"].to(torch.float32)
        t = inputs["timestep"].to(torch.float32).reshape(-1)
        context = inputs["encoder_hidden_states"].to(torch.float32).mean(dim=(1, 2))
        return {"noise_pred": torch.tanh(gain * x + _per_row(t, 4) / 1000 + 3 * _per_row(context, 4))}

    return run


def _vae(inputs):
    latent = inputs["latent"].to(torch.float32)[:, :3]
    image = torch.sigmoid(latent).repeat_interleave(VAE_SCALE, dim=2).repeat_interleave(VAE_SCALE, dim=3)
    return {"image": image}


def _reward(inputs):
    image = inputs["image"].to(torch.float32)
    ids = inputs["reward_input_ids"].to(torch.float32)
    return {"score": 20 * (image.mean(dim=(1, 2, 3)) - 0.5) + ids.mean(dim=1) / 1000}


def fake_engines(deployment: Deployment) -> Engines:
    specs = deployment.specs()
    fns = {"text_encoder": _text_encoder, "unet_student": _unet(0.5), "unet_teacher": _unet(-0.3), "vae_decoder": _vae, "image_reward": _reward}
    return Engines(**{name: FakeEngine(specs[name], fns[name]) for name in specs})


# ---------------------------------------------------------------------------------------------
# a repository holding only what the BLS reads at initialize: manifest and tokenizer files


def write_fake_repository(root: Path, deployment: Deployment) -> Path:
    from export.checkpoints.tokenizers import write_bert_vocab, write_clip_tokenizer

    repository = root / "repository"
    assets = assets_dir(repository)
    assets.mkdir(parents=True, exist_ok=True)
    deployment.save(assets)
    write_clip_tokenizer(clip_tokenizer_dir(repository))
    write_bert_vocab(reward_vocab(repository).parent)
    return repository


def fake_pipeline(repository: Path, deployment: Deployment, engines: Engines | None = None) -> AdaptivePipeline:
    return AdaptivePipeline(engines or fake_engines(deployment), deployment, load_tokenizers(repository, deployment))


# ---------------------------------------------------------------------------------------------
# pb_utils: the part of triton_python_backend_utils that the BLS model and bll_python use


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True


class _TritonError:
    INVALID_ARG, CANCELLED, UNAVAILABLE, INTERNAL, UNKNOWN = "INVALID_ARG", "CANCELLED", "UNAVAILABLE", "INTERNAL", "UNKNOWN"

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> str:
        return self._code


class _InferenceResponse:
    def __init__(self, output_tensors: list[_Tensor] | None = None, error: _TritonError | None = None) -> None:
        self._outputs, self._error = list(output_tensors or []), error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> _TritonError | None:
        return self._error

    def output_tensors(self) -> list[_Tensor]:
        return self._outputs

    def as_dict(self) -> dict[str, np.ndarray]:
        return {t.name(): t.as_numpy() for t in self._outputs}


class _Metric:
    """pb_utils.Metric: ``increment``/``set``/``observe`` and ``value()``, as the Python backend has them."""

    def __init__(self, labels: dict[str, str], buckets: list[float] | None = None, kind: str = "COUNTER") -> None:
        self.labels, self.buckets, self.kind, self._value, self.observations = labels, buckets, kind, 0.0, []

    def increment(self, by: float) -> None:
        assert by >= 0 or self.kind == "GAUGE", "counters only go up"
        self._value += by

    def set(self, value: float) -> None:
        self._value = value

    def value(self) -> float:
        return self._value

    def observe(self, value: float) -> None:
        self.observations.append(value)


class _MetricFamily:
    COUNTER, GAUGE, HISTOGRAM = "COUNTER", "GAUGE", "HISTOGRAM"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind, self.metrics = name, kind, []
        FakePbUtils.current.families[name] = self

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> _Metric:
        metric = _Metric(labels, buckets, self.kind)
        self.metrics.append(metric)
        return metric


class _Logger:
    @staticmethod
    def log_error(message: str) -> None:
        FakePbUtils.current.errors_logged.append(message)

    log_info = log_warn = log_verbose = staticmethod(lambda message: None)


class FakeRequest:
    """A BLS request: its input tensors (``name -> [b, 1]`` array) and a cancellation flag."""

    def __init__(self, tensors: dict[str, np.ndarray], cancelled: Callable[[], bool] = lambda: False) -> None:
        self.tensors, self._cancelled = tensors, cancelled

    def is_cancelled(self) -> bool:
        return self._cancelled()


class FakePbUtils:
    """Builds a ``triton_python_backend_utils`` module whose BLS calls run ``engines`` in-process.

    A component call goes through Triton's wire format as the config declares it: per-row scalars
    (dims ``[B]``) travel as ``[B, 1]`` and are reshaped to ``[B]`` on the model side.
    """

    current: "FakePbUtils"

    def __init__(self, engines: Engines) -> None:
        self.engines = dict(engines.items())
        self.families: dict[str, _MetricFamily] = {}
        self.errors_logged: list[str] = []
        self.component_calls: list[tuple[str, int]] = []
        FakePbUtils.current = self
        module = types.ModuleType("triton_python_backend_utils")
        module.Tensor = _Tensor
        module.TritonError = _TritonError
        module.InferenceResponse = _InferenceResponse
        module.MetricFamily = _MetricFamily
        module.Logger = _Logger
        module.InferenceRequest = self._inference_request
        module.get_input_tensor_by_name = lambda request, name: _Tensor(name, request.tensors[name]) if name in request.tensors else None
        module.get_output_tensor_by_name = lambda response, name: next((t for t in response.output_tensors() if t.name() == name), None)
        module.TRITONSERVER_MEMORY_GPU = 2
        module.PreferredMemory = lambda *a, **k: None
        self.module = module

    def _inference_request(self, model_name: str, requested_output_names: list[str], inputs: list[_Tensor], **kwargs: Any):
        engine = self.engines[model_name]
        pb = self

        class _Request:
            def exec(self) -> _InferenceResponse:
                feeds = {}
                for t in inputs:
                    spec = next(s for s in engine.spec.inputs if s.name == t.name())
                    array = t.as_numpy()
                    if spec.dims == (BATCH,):
                        assert array.ndim == 2 and array.shape[1] == 1, f"{t.name()}: per-row scalars travel as [B, 1]"
                        array = array[:, 0]
                    feeds[t.name()] = torch.from_numpy(np.ascontiguousarray(array))
                rows = int(next(iter(feeds.values())).shape[0])
                # Triton refuses a request larger than the model's max_batch_size.
                assert rows <= engine.spec.max_batch, f"{model_name} got {rows} rows, max_batch_size is {engine.spec.max_batch}"
                pb.component_calls.append((model_name, rows))
                try:
                    out = engine(feeds)
                except ComponentError as e:
                    return _InferenceResponse(error=_TritonError(e.args[0].split(": ", 1)[1], _TritonError.INTERNAL))
                return _InferenceResponse([_Tensor(n, out[n].numpy()) for n in requested_output_names])

        return _Request()

    def metric(self, family: str, **labels: str) -> float:
        for m in self.families[family].metrics:
            if m.labels == labels:
                return m.value()
        raise KeyError((family, labels))


def load_bls_model(pb: FakePbUtils, source: Path = BLS_SOURCE) -> types.ModuleType:
    """Import the BLS ``model.py`` against the fake ``pb_utils`` (it imports it at module level)."""
    import importlib.util

    sys.modules["triton_python_backend_utils"] = pb.module
    try:
        spec = importlib.util.spec_from_file_location("bls_model_under_test", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        del sys.modules["triton_python_backend_utils"]
    return module


def bls_initialize_args(repository: Path, parameters: dict[str, str] | None = None) -> dict[str, str]:
    """What the Python backend passes to ``initialize``: paths and the model config as JSON."""
    config = {"name": BLS_MODEL, "parameters": {k: {"string_value": v} for k, v in (parameters or {}).items()}}
    return {
        "model_repository": str(repository / BLS_MODEL),
        "model_version": "1",
        "model_config": json.dumps(config),
        "model_instance_device_id": "0",
    }
