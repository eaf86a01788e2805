"""Request parsing and batch assembly for the BLS model, with no Triton import.

Triton hands ``execute`` a list of requests (dynamic batching). Each is parsed on its own, so a bad
one gets its own error; the good rows are grouped by settings and run through the pipeline in
batches of at most ``max_rows``; results are scattered back to their requests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import numpy as np

from bll_python.contract import REQUEST_FIELDS, RESPONSE_FIELDS, SETTING_FIELDS
from bll_python.engines import ComponentError
from bll_python.load_policy import LoadPolicy
from bll_python.pipeline import AdaptivePipeline, Cancelled, StageObserver
from bll_python.settings import MAX_TEXT_BYTES, GenerationSettings, SettingsError, check_number, is_blank

_FIELDS = {f.name: f for f in REQUEST_FIELDS}
_NUMERIC_KINDS = {"float32": "f", "int32": "iu", "int64": "iu", "bool": "b"}


@dataclass
class Row:
    prompt: str
    negative_prompt: str
    seed: int
    settings: GenerationSettings


@dataclass
class RequestResult:
    images: np.ndarray  # uint8 [b, H, W, 3]
    scores: np.ndarray  # float32 [b, 1]
    routes: np.ndarray  # object (bytes) [b, 1]
    unet_steps: np.ndarray  # int32 [b, 1]
    truncated: np.ndarray  # bool [b, 1]
    effective_k: np.ndarray  # float32 [b, 1], NO_K where there was no k
    effective_tau: np.ndarray  # float32 [b, 1], 0 where there was no gate

    def tensors(self) -> dict[str, np.ndarray]:
        """The response tensors by their contract names."""
        by_name = {
            "image": self.images,
            "score": self.scores,
            "route": self.routes,
            "unet_steps": self.unet_steps,
            "truncated": self.truncated,
            "effective_k": self.effective_k,
            "effective_tau": self.effective_tau,
        }
        return {f.name: by_name[f.name] for f in RESPONSE_FIELDS}


def _text(name: str, value: object) -> str:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, (bytes, np.bytes_)):
        raise SettingsError(name, f"expected UTF-8 bytes (Triton BYTES), got {type(value).__name__}")
    raw = bytes(value)
    if len(raw) > MAX_TEXT_BYTES:
        raise SettingsError(name, f"got {len(raw)} bytes; allowed at most {MAX_TEXT_BYTES} (text past 77 CLIP tokens is truncated anyway)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SettingsError(name, f"got {raw[:24]!r}{'...' if len(raw) > 24 else ''}, which is not valid UTF-8 ({e.reason} at byte {e.start}); expected UTF-8 text") from None


def _in_row(e: SettingsError, row: int, rows: int) -> SettingsError:
    # A multi-row request needs to know which of its rows was refused.
    return SettingsError(e.field, f"{e.detail} (row {row})") if rows > 1 else e


def _column(name: str, array: np.ndarray, rows: int | None) -> np.ndarray:
    spec = _FIELDS[name]
    if array.ndim != 2 or array.shape[1] != 1:
        raise SettingsError(name, f"expected shape [batch, 1], got {list(array.shape)}")
    if rows is not None and array.shape[0] != rows:
        raise SettingsError(name, f"has {array.shape[0]} rows but prompt has {rows}")
    if spec.dtype == "bytes":
        if array.dtype != np.object_ and array.dtype.kind not in "SU":
            raise SettingsError(name, f"expected BYTES, got {array.dtype}")
    elif array.dtype.kind not in _NUMERIC_KINDS[spec.dtype]:
        raise SettingsError(name, f"expected {spec.client_dtype}, got {array.dtype}")
    return array[:, 0]


def parse_request(tensors: Mapping[str, np.ndarray | None], defaults: GenerationSettings) -> list[Row]:
    """One request's tensors (``name -> [b, 1]`` array, or None when absent) to validated rows."""
    unknown = sorted(set(k for k, v in tensors.items() if v is not None) - set(_FIELDS))
    if unknown:
        raise SettingsError(unknown[0], "is not an input of adaptive_diffusion")
    if tensors.get("prompt") is None:
        raise SettingsError("prompt", "is required")
    column = _column("prompt", tensors["prompt"], None)
    b = len(column)
    if b == 0:
        raise SettingsError("prompt", "empty batch")
    columns = {name: _column(name, tensors[name], b) for name in _FIELDS if name != "prompt" and tensors.get(name) is not None}
    rows = []
    for i in range(b):
        try:
            rows.append(_row(i, column, columns, defaults))
        except SettingsError as e:
            raise _in_row(e, i, b) from None
    # One response tensor holds all of a request's images, so they share one size.
    for side in ("height", "width"):
        sizes = sorted({getattr(r.settings, side) or 0 for r in rows})
        if len(sizes) > 1:
            raise SettingsError(side, f"rows of one request must share one image size, got {sizes}; send rows of other sizes as separate requests")
    return rows


def _row(i: int, prompts: np.ndarray, columns: Mapping[str, np.ndarray], defaults: GenerationSettings) -> Row:
    prompt = _text("prompt", prompts[i])
    if is_blank(prompt):
        shown = prompt.encode("unicode_escape").decode("ascii")[:48]
        raise SettingsError("prompt", f"got '{shown}', which is blank (no visible character); expected at least one visible character")
    negative = _text("negative_prompt", columns["negative_prompt"][i]) if "negative_prompt" in columns else ""
    seed = check_number("seed", int(columns["seed"][i])) if "seed" in columns else 0
    given: dict[str, object] = {}
    for name in SETTING_FIELDS:
        if name not in columns:
            continue
        value = columns[name][i]
        if _FIELDS[name].dtype == "bytes":
            given[name] = _text(name, value)
        elif _FIELDS[name].dtype == "bool":
            given[name] = bool(value)
        else:
            # Checked here too (not only in GenerationSettings) so that NaN never reaches a batch key.
            given[name] = check_number(name, value.item())
    return Row(prompt, negative, int(seed), GenerationSettings.from_mapping(given, defaults))


# Triton status codes by name: pb_utils.TritonError.<code> in the BLS.
INVALID_ARG, CANCELLED, UNAVAILABLE, INTERNAL = "INVALID_ARG", "CANCELLED", "UNAVAILABLE", "INTERNAL"


def _first_line(text: str) -> str:
    # The Python backend appends the failing stub's traceback ("At: /path/model.py(27): execute"):
    # server paths are nobody's business on the client side; the server log keeps the full text.
    return text.strip().split("\n", 1)[0].strip()


def error_status(exc: BaseException) -> tuple[str, str]:
    """The Triton status code (by name) and the client-facing message for a failed request."""
    if isinstance(exc, SettingsError):
        return INVALID_ARG, str(exc)
    if isinstance(exc, Cancelled):
        return CANCELLED, str(exc)
    if isinstance(exc, ComponentError):
        return (UNAVAILABLE if exc.unavailable else INTERNAL), f"component {_first_line(str(exc))}"
    return INTERNAL, f"internal error: {type(exc).__name__}: {_first_line(str(exc))}"


# Not NaN: Triton's JSON (HTTP) responses and perf_analyzer's profile export cannot hold NaN.
NO_K = -1.0  # effective_k of a row whose tau was given, or whose strategy has no gate


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)


class BatchRunner:
    """Groups rows of many requests by settings and runs each group through the pipeline.

    With a ``policy``, each group's k is the policy's choice for the load that ``load()`` reads at
    the moment the group starts (rows in flight, server-wide).
    """

    def __init__(self, pipeline: AdaptivePipeline, max_rows: int, *, policy: LoadPolicy | None = None, load: Callable[[], float] | None = None) -> None:
        if (policy is None) != (load is None):
            raise ValueError("a load policy needs a load signal, and a load signal a policy")
        self.pipeline = pipeline
        self.max_rows = max_rows
        self.policy = policy
        self.load = load

    def settings_under_load(self, settings: GenerationSettings) -> GenerationSettings:
        """``settings`` with the k the load policy chooses now (unchanged without a policy)."""
        if self.policy is None or self.load is None:
            return settings
        self.policy.observe(self.load())
        requested = self.pipeline.deployment.requested_k(settings)
        if not settings.strategy.is_adaptive or requested is None:
            return settings
        k = self.policy.effective_k(requested, exact=settings.exact_k)
        return settings if k == requested else replace(settings, k=k)

    def run(
        self,
        requests: Sequence[list[Row] | Exception],
        *,
        on_stage: StageObserver | None = None,
        cancelled: Callable[[int], bool] | None = None,
        on_batch: Callable[[Sequence[Row], object], None] | None = None,
    ) -> list[RequestResult | Exception]:
        """``cancelled(i)`` tells whether request i was cancelled; its rows stop at the next step."""
        results: list[RequestResult | Exception | None] = [r if isinstance(r, Exception) else None for r in requests]
        groups: dict[tuple, list[tuple[int, int]]] = {}
        for i, rows in enumerate(requests):
            if isinstance(rows, Exception):
                continue
            for j, row in enumerate(rows):
                groups.setdefault(row.settings.key(), []).append((i, j))
        outputs: dict[tuple[int, int], tuple] = {}
        for members in groups.values():
            for start in range(0, len(members), self.max_rows):
                chunk = members[start : start + self.max_rows]
                owners = sorted({i for i, _ in chunk})
                rows = [requests[i][j] for i, j in chunk]  # type: ignore[index]

                def check() -> None:
                    if cancelled and all(cancelled(i) for i in owners):
                        raise Cancelled("cancelled by the client")

                try:
                    out = self.pipeline(
                        [r.prompt for r in rows],
                        seeds=[r.seed for r in rows],
                        settings=self.settings_under_load(rows[0].settings),
                        negative_prompts=[r.negative_prompt for r in rows],
                        on_stage=on_stage,
                        check_cancelled=check,
                    )
                except Exception as e:  # one failing group must not take the others down
                    for i in owners:
                        results[i] = e
                    continue
                if on_batch:
                    on_batch(rows, out)
                for k, key in enumerate(chunk):
                    outputs[key] = (out.images[k], out.scores[k], out.routes[k].value, out.unet_steps[k], out.truncated[k], _or(out.k, NO_K), _or(out.tau, 0.0))
        for i, rows in enumerate(requests):
            if results[i] is not None or isinstance(rows, Exception):
                continue
            parts = [outputs[(i, j)] for j in range(len(rows))]
            results[i] = RequestResult(
                images=np.stack([p[0] for p in parts]),
                scores=np.array([[p[1]] for p in parts], dtype=np.float32),
                routes=np.array([[p[2].encode()] for p in parts], dtype=np.object_),
                unet_steps=np.array([[p[3]] for p in parts], dtype=np.int32),
                truncated=np.array([[bool(p[4])] for p in parts], dtype=np.bool_),
                effective_k=np.array([[p[5]] for p in parts], dtype=np.float32),
                effective_tau=np.array([[p[6]] for p in parts], dtype=np.float32),
            )
        return results  # type: ignore[return-value]
