"""Engines that call the component models from inside the BLS via ``pb_utils.InferenceRequest``.

``pb_utils`` is passed in rather than imported: it only exists inside the Python backend stub,
and this way the module stays importable (and testable with a fake) everywhere.
"""

from __future__ import annotations

from types import ModuleType
from typing import Mapping

import numpy as np
import torch

from bll_python.engines import ComponentError, Engines, Tensors, cast_inputs, run_in_chunks
from bll_python.specs import ComponentSpec


def use_cuda_device(device: str) -> None:
    """Make ``device``'s GPU the stub's current CUDA device (nothing for ``"cpu"``).

    The Python backend stub copies BLS tensors with plain ``cudaMemcpy`` on the *current* device's
    legacy default stream (python_backend r24.10, ``PbMemory::CopyBuffer``). torch's work on the same
    device's default stream is ordered before those copies only when that device is current; on an
    instance placed on GPU N != 0 the current device would otherwise stay 0.
    """
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))


class TritonEngine:
    def __init__(self, pb_utils: ModuleType, spec: ComponentSpec, *, timeout_ms: int = 0, device: str = "cpu") -> None:
        self.pb = pb_utils
        self.spec = spec
        self.timeout_ms = timeout_ms
        self.gpu = device.startswith("cuda")
        self.request_kwargs: dict = {"timeout": timeout_ms * 1000} if timeout_ms else {}  # microseconds
        if self.gpu:
            # Ask the component to answer in this GPU's memory, so outputs stay device tensors.
            device_id = int(device.partition(":")[2] or 0)
            self.request_kwargs["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, device_id)

    def _tensor(self, name: str, value: torch.Tensor):
        if value.dim() == 1:
            value = value.unsqueeze(-1)  # per-row scalars travel as [B, 1] (config reshape)
        if self.gpu and value.device.type != "cpu":
            # DLPack keeps the tensor on the GPU: no host copy between denoising steps. The tensor
            # itself, not a capsule: through ``__dlpack__(stream=...)`` the stub makes its proxy
            # stream wait for torch's pending work on the tensor (a capsule carries no stream).
            return self.pb.Tensor.from_dlpack(name, value.contiguous())
        return self.pb.Tensor(name, np.ascontiguousarray(value.cpu().numpy()))

    def _output(self, tensor) -> torch.Tensor:
        if self.gpu and not tensor.is_cpu():
            return torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
        return torch.from_numpy(tensor.as_numpy())

    def _run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        request = self.pb.InferenceRequest(
            model_name=self.spec.name,
            requested_output_names=self.spec.output_names,
            inputs=[self._tensor(n, v) for n, v in cast_inputs(self.spec, inputs).items()],
            **self.request_kwargs,
        )
        try:
            response = request.exec()
        except Exception as e:  # the stub raises when the model is missing or unloaded
            raise ComponentError(self.spec.name, str(e), unavailable=True) from e
        if response.has_error():
            message = response.error().message()
            # Retryable states: a missing or unloaded model, a crashed stub (2.51 does not restart it;
            # the launcher's watchdog restarts the server), a queue timeout (component_timeout_ms).
            retryable = ("unavailable", "not ready", "unknown model", "not found", "not healthy", "timeout expired")
            unavailable = any(w in message.lower() for w in retryable)
            raise ComponentError(self.spec.name, message, unavailable=unavailable)
        outputs = {}
        for t in self.spec.outputs:
            value = self._output(self.pb.get_output_tensor_by_name(response, t.name))
            outputs[t.name] = value.reshape(-1) if len(t.dims) == 1 else value
        return outputs

    def __call__(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        return run_in_chunks(self.spec, inputs, self._run)


def triton_engines(pb_utils: ModuleType, specs: Mapping[str, ComponentSpec], **kwargs) -> Engines:
    return Engines(**{name: TritonEngine(pb_utils, spec, **kwargs) for name, spec in specs.items()})
