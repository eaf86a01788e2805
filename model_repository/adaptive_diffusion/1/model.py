"""Triton BLS adapter for ``bll_python``: parse requests, run the adaptive pipeline, answer.

All logic (validation, batching by settings, Algorithm 1, gating) lives in ``bll_python`` and runs
the same in-process; this file only translates between Triton objects and that code.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from bll_python.contract import REQUEST_FIELDS
from bll_python.deployment import Deployment
from bll_python.inprocess import load_tokenizers
from bll_python.layout import assets_dir
from bll_python.load_policy import GaugeState, LoadPolicy
from bll_python.metrics import ServingMetrics
from bll_python.pipeline import AdaptivePipeline
from bll_python.serving import BatchRunner, error_status, parse_request
from bll_python.triton_engines import triton_engines, use_cuda_device


def _error(exc):
    code, message = error_status(exc)
    if code in ("INTERNAL", "UNAVAILABLE"):
        # The client gets the first line; the operator gets the whole of it (component tracebacks).
        pb_utils.Logger.log_error(f"adaptive_diffusion: {type(exc).__name__}: {exc}")
    return pb_utils.TritonError(message, getattr(pb_utils.TritonError, code))


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
        use_cuda_device(device)
        engines = triton_engines(
            pb_utils,
            self.deployment.specs(),
            timeout_ms=int(params.get("component_timeout_ms", "0")),
            device=device,
        )
        pipeline = AdaptivePipeline(engines, self.deployment, load_tokenizers(repository, self.deployment), device=device)
        self.metrics = ServingMetrics(pb_utils, components=self.deployment.specs(), default_k=self.deployment.default_k)
        # Every instance reads the server-wide rows in flight and shares one policy state (gauges).
        policy = self.deployment.load_policy
        self.runner = BatchRunner(
            pipeline,
            self.deployment.max_rows,
            policy=LoadPolicy(policy, state=GaugeState(**self.metrics.policy_state)) if policy else None,
            load=self.metrics.rows_in_flight.value if policy else None,
        )

    def _parse(self, request):
        tensors = {}
        for field in REQUEST_FIELDS:
            tensor = pb_utils.get_input_tensor_by_name(request, field.name)
            tensors[field.name] = None if tensor is None else tensor.as_numpy()
        try:
            return parse_request(tensors, self.deployment.defaults)
        except Exception as e:  # whatever one request holds, it fails alone
            return e

    def execute(self, requests):
        parsed = [self._parse(r) for r in requests]
        rows = sum(len(p) for p in parsed if not isinstance(p, Exception))
        self.metrics.rows_in_flight.increment(rows)
        try:
            results = self.runner.run(
                parsed,
                on_stage=self.metrics.observe_stage,
                cancelled=lambda i: requests[i].is_cancelled(),
                on_batch=self.metrics.observe_batch,
            )
        finally:
            self.metrics.rows_in_flight.increment(-rows)
        responses = []
        for result in results:
            if isinstance(result, Exception):
                self.metrics.observe_response(result)
                responses.append(pb_utils.InferenceResponse(error=_error(result)))
                continue
            self.metrics.observe_response(None)
            tensors = [pb_utils.Tensor(name, array) for name, array in result.tensors().items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
