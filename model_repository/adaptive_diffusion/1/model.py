"""Triton BLS adapter for ``bll_python``: parse requests, run the adaptive pipeline, answer.

All logic (validation, batching by settings, Algorithm 1, gating) lives in ``bll_python`` and runs
the same in-process; this file only translates between Triton objects and that code.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from bll_python.contract import REQUEST_FIELDS
from bll_python.deployment import Deployment
from bll_python.engines import ComponentError
from bll_python.inprocess import load_tokenizers
from bll_python.layout import assets_dir
from bll_python.metrics import ServingMetrics
from bll_python.pipeline import AdaptivePipeline, Cancelled
from bll_python.serving import BatchRunner, parse_request
from bll_python.settings import SettingsError
from bll_python.triton_engines import triton_engines


def _error(exc):
    if isinstance(exc, SettingsError):
        return pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
    if isinstance(exc, Cancelled):
        return pb_utils.TritonError(str(exc), pb_utils.TritonError.CANCELLED)
    if isinstance(exc, ComponentError):
        code = pb_utils.TritonError.UNAVAILABLE if exc.unavailable else pb_utils.TritonError.INTERNAL
        return pb_utils.TritonError(f"component {exc}", code)
    return pb_utils.TritonError(f"internal error: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)


class TritonPythonModel:
    def initialize(self, args):
        repository = Path(args["model_repository"]).parent
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.deployment = Deployment.load(assets_dir(repository))
        # The tensorrt repository asks for "cuda": tensors then stay on this instance's GPU.
        device = params.get("device", "cpu")
        if device == "cuda":
            device = f"cuda:{args['model_instance_device_id']}"
        engines = triton_engines(
            pb_utils,
            self.deployment.specs(),
            timeout_ms=int(params.get("component_timeout_ms", "0")),
            device=device,
        )
        pipeline = AdaptivePipeline(engines, self.deployment, load_tokenizers(repository, self.deployment), device=device)
        self.runner = BatchRunner(pipeline, self.deployment.max_rows)
        self.metrics = ServingMetrics(pb_utils)

    def _parse(self, request):
        tensors = {}
        for field in REQUEST_FIELDS:
            tensor = pb_utils.get_input_tensor_by_name(request, field.name)
            tensors[field.name] = None if tensor is None else tensor.as_numpy()
        try:
            return parse_request(tensors, self.deployment.defaults)
        except SettingsError as e:
            return e

    def execute(self, requests):
        parsed = [self._parse(r) for r in requests]
        results = self.runner.run(
            parsed,
            on_stage=self.metrics.observe_stage,
            cancelled=lambda i: requests[i].is_cancelled(),
            on_batch=self.metrics.observe_batch,
        )
        responses = []
        for result in results:
            if isinstance(result, Exception):
                self.metrics.observe_error(result)
                responses.append(pb_utils.InferenceResponse(error=_error(result)))
                continue
            tensors = [
                pb_utils.Tensor("image", result.images),
                pb_utils.Tensor("score", result.scores),
                pb_utils.Tensor("route", result.routes),
                pb_utils.Tensor("unet_steps", result.unet_steps),
                pb_utils.Tensor("truncated", result.truncated),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
