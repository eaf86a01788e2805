"""Triton Python model that runs one component's TensorRT plan with the tensorrt Python API.

Template for servers without Triton's TensorRT backend (the pip-installed tritonserver):
``export.triton.tensorrt`` copies it (and the ``bll_python`` it imports) next to each component's
``model.plan`` when writing a repository with ``backend="python-trt"``. Inputs and outputs are bound by the names in ``config.pbtxt``; all
requests of one execution run as one engine call on torch CUDA tensors, and outputs leave as GPU
tensors through DLPack, so a BLS on the same GPU never copies through the host.

``tensorrt`` is imported in ``initialize``: this file stays importable where it is not installed.
"""

import json
import os

import torch
import triton_python_backend_utils as pb_utils

from bll_python.dtypes import tensorrt_to_torch


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        if args.get("model_instance_kind") != "GPU":
            raise pb_utils.TritonModelException(f"{self.name}: a TensorRT plan runs on a GPU; use instance_group kind KIND_GPU")
        import tensorrt as trt

        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.device = torch.device("cuda", int(args["model_instance_device_id"]))
        torch.cuda.set_device(self.device)
        path = os.path.join(args["model_repository"], args["model_version"], params.get("plan_file", "model.plan"))
        self.logger = trt.Logger(trt.Logger.WARNING)
        with open(path, "rb") as f:
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise pb_utils.TritonModelException(f"{self.name}: cannot deserialize {path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)

        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        engine_io = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        missing = [n for n in self.inputs + self.outputs if n not in engine_io]
        if missing:
            raise pb_utils.TritonModelException(f"{self.name}: config names {missing} are not tensors of {path}; it has {sorted(engine_io)}")
        dtypes = tensorrt_to_torch(trt)
        self.dtypes = {n: dtypes[self.engine.get_tensor_dtype(n)] for n in self.inputs + self.outputs}
        self.engine_dims = {n: tuple(self.engine.get_tensor_shape(n)) for n in self.inputs}

    def _input(self, request, name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor.is_cpu():
            return torch.from_numpy(tensor.as_numpy())
        return torch.utils.dlpack.from_dlpack(tensor.to_dlpack())

    def _as_engine_input(self, name, pieces):
        """One engine input from each request's piece. Every piece moves to this instance's GPU
        before they are joined: with FORCE_CPU_ONLY_INPUT_TENSORS off, requests of one batch may
        arrive some in host memory and some on a GPU."""
        x = torch.cat([p.to(self.device, self.dtypes[name], non_blocking=True) for p in pieces])
        dims = self.engine_dims[name]
        if x.dim() != len(dims):
            # A per-row scalar may arrive as [B, 1] when the config's reshape was not applied.
            if any(d < 0 for d in dims[1:]):
                raise ValueError(f"input {name!r} has shape {tuple(x.shape)}, the engine wants {dims}")
            x = x.reshape(x.shape[0], *dims[1:])
        return x.contiguous()

    def _on_stream(self):
        return torch.cuda.stream(self.stream)

    def _run(self, per_request):
        """Bind, enqueue and finish one engine call; returns its outputs."""
        with self._on_stream():
            feeds = {n: self._as_engine_input(n, [a[k] for a in per_request]) for k, n in enumerate(self.inputs)}
            for n, x in feeds.items():
                if not self.context.set_input_shape(n, tuple(x.shape)):
                    raise ValueError(f"input {n!r} shape {tuple(x.shape)} is outside the engine's profile")
                self.context.set_tensor_address(n, x.data_ptr())
            outs = {}
            for n in self.outputs:
                outs[n] = torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=self.dtypes[n], device=self.device)
                self.context.set_tensor_address(n, outs[n].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("execute_async_v3 failed (see the server log)")
        # Outputs leave this process by CUDA IPC, with no stream attached: finish them here.
        self.stream.synchronize()
        return outs

    def _drain_stream(self):
        # On an error, copies and the engine may still be reading the requests' buffers (Triton's CUDA
        # pool), which Triton reuses once the responses are sent: wait for them first.
        try:
            self.stream.synchronize()
        except Exception as e:  # a sticky CUDA error: the error responses still go out
            pb_utils.Logger.log_error(f"{self.name}: synchronizing after a failed execution: {e}")

    def execute(self, requests):
        try:
            per_request = [[self._input(r, n) for n in self.inputs] for r in requests]
            sizes = [arrays[0].shape[0] for arrays in per_request]
            outs = self._run(per_request)
        except Exception as e:
            self._drain_stream()
            error = pb_utils.TritonError(f"{self.name}: {e}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor.from_dlpack(n, torch.utils.dlpack.to_dlpack(o[start : start + size].contiguous())) for n, o in outs.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self):
        self.context = None
        self.engine = None
