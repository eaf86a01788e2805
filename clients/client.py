"""A small library over tritonclient (HTTP or gRPC) for the ``adaptive_diffusion`` model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bll_python.contract import REQUEST_FIELDS, RESPONSE_FIELDS, SETTING_FIELDS
from clients.retry import RetryPolicy

MODEL = "adaptive_diffusion"


@dataclass
class Generation:
    prompt: str
    seed: int
    image: np.ndarray  # uint8 H x W x 3
    score: float
    route: str
    unet_steps: int
    truncated: bool
    latency_s: float
    effective_k: float  # -1 where the request gave tau or its strategy has no gate
    effective_tau: float  # 0 where its strategy has no gate


def _client_module(protocol: str):
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    return module


def build_inputs(module, prompts: Sequence[str], seeds: Sequence[int] | None = None, negative_prompts: Sequence[str] | None = None, **settings: Any) -> list:
    """tritonclient ``InferInput`` objects for one request of ``len(prompts)`` rows.

    ``settings`` are the contract's optional fields (guidance_scale, student_steps, ...); None
    values are left out so the server's defaults apply.
    """
    unknown = sorted(set(settings) - set(SETTING_FIELDS))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {list(SETTING_FIELDS)}")
    rows = len(prompts)
    values: dict[str, Any] = {"prompt": list(prompts)}
    if seeds is not None:
        values["seed"] = list(seeds)
    if negative_prompts is not None:
        values["negative_prompt"] = list(negative_prompts)
    values.update({k: [v] * rows for k, v in settings.items() if v is not None})
    inputs = []
    for field in REQUEST_FIELDS:
        if field.name not in values:
            continue
        column = values[field.name]
        if field.dtype == "bytes":
            array = np.array([[v.encode("utf-8") if isinstance(v, str) else v] for v in column], dtype=np.object_)
        else:
            array = np.array([[v] for v in column], dtype=field.numpy_dtype)
        tensor = module.InferInput(field.name, list(array.shape), field.client_dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


class AdaptiveClient:
    """``generate`` sends one request (all its prompts as rows) and returns one Generation per row.

    What a restarting or overloaded server answers (UNAVAILABLE, a reloading model's NOT_FOUND, a
    refused connection; ``clients/retry.py``) is retried with backoff for up to ``retry_s`` seconds
    (0: never); bad requests fail at once.
    """

    def __init__(self, url: str, protocol: str = "http", model: str = MODEL, timeout_s: float = 600.0, retry_s: float = 30.0) -> None:
        self.protocol = protocol
        self.module = _client_module(protocol)
        self.model = model
        self.timeout_s = timeout_s
        self.retry = RetryPolicy(deadline_s=retry_s)
        kwargs = {"network_timeout": timeout_s, "connection_timeout": timeout_s} if protocol == "http" else {}
        self.client = self.module.InferenceServerClient(url, **kwargs)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "AdaptiveClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, prompts: Sequence[str], seeds: Sequence[int] | None = None, negative_prompts: Sequence[str] | None = None, **settings: Any):
        inputs = build_inputs(self.module, prompts, seeds, negative_prompts, **settings)
        outputs = [self.module.InferRequestedOutput(f.name) for f in RESPONSE_FIELDS]
        start = time.monotonic()

        def attempt(_retry_left_s: float):
            # One deadline for all attempts together: what is left of timeout_s.
            left = max(self.timeout_s - (time.monotonic() - start), 0.001)
            kwargs = {"client_timeout": left} if self.protocol == "grpc" else {}
            return self.client.infer(self.model, inputs, outputs=outputs, **kwargs)

        return self.retry.call(attempt)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int] | None = None, negative_prompts: Sequence[str] | None = None, **settings: Any) -> list[Generation]:
        start = time.perf_counter()
        result = self.infer(prompts, seeds, negative_prompts, **settings)
        latency = time.perf_counter() - start
        images = result.as_numpy("image")
        scores = result.as_numpy("score").reshape(-1)
        routes = result.as_numpy("route").reshape(-1)
        steps = result.as_numpy("unet_steps").reshape(-1)
        truncated = result.as_numpy("truncated").reshape(-1)
        ks = result.as_numpy("effective_k").reshape(-1)
        taus = result.as_numpy("effective_tau").reshape(-1)
        seeds = list(seeds) if seeds is not None else [0] * len(prompts)
        return [
            Generation(p, int(seeds[i]), images[i], float(scores[i]), routes[i].decode(), int(steps[i]), bool(truncated[i]), latency, float(ks[i]), float(taus[i]))
            for i, p in enumerate(prompts)
        ]
