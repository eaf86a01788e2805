"""Triton Python model that runs one component's ONNX graph with ONNX Runtime.

Template: ``export.triton.onnxruntime`` copies it (and the ``bll_python`` it imports) next to each
component's ``model.onnx``. All requests of one execution (the dynamic batcher's batch) are
concatenated and run as a single session call.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from bll_python.ort_options import ort_session_options  # torch-free: keeps this stub small


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        threads = int(params.get("intra_op_threads", "0") or 0)
        options = ort_session_options(threads, params.get("allow_spinning", "0") == "1")
        self.session = ort.InferenceSession(os.path.join(here, params.get("onnx_file", "model.onnx")), options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        try:
            per_request = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs] for r in requests]
            sizes = [arrays[0].shape[0] for arrays in per_request]
            if len(per_request) == 1:
                feeds = dict(zip(self.inputs, per_request[0]))  # the usual case: no concatenation copy
            else:
                feeds = {n: np.concatenate([arrays[k] for arrays in per_request]) for k, n in enumerate(self.inputs)}
            outs = self.session.run(self.outputs, feeds)
        except Exception as e:
            error = pb_utils.TritonError(f"{self.name}: {e}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(o[start : start + size])) for n, o in zip(self.outputs, outs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
