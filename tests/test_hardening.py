"""Hardened serving (issue 7): bad input, faults, cancellation, access control, metrics.

Read as the specification of how ``adaptive_diffusion`` behaves when things go wrong:

- every bad request gets INVALID_ARG naming the field, the value and the allowed range, and the good
  requests that share its dynamic batch (one BLS ``execute``) still get their images;
- a failing component fails only the requests that reach it, with its name in the error, and the
  server serves again once it is back; a SIGKILLed Python stub is reported, not silently retried;
- a cancelled request (or one whose client deadline passed) stops consuming UNet steps;
- the admin APIs need the key; inference, health, metadata and statistics do not;
- the custom Prometheus metrics count exactly what was served.

Non-destructive tests share the session's ``tiny_server``; breaking things happens on a server of
its own over a copy of the repository with a fault-injecting ``unet_teacher``.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bll_python.contract import REQUEST_FIELDS, RESPONSE_FIELDS
from bll_python.layout import read_model_config
from bll_python.settings import LIMITS, MAX_TEXT_BYTES
from bll_python.specs import BATCH
from clients.client import build_inputs
from export.triton.configs import write_config
from tests.triton_fixtures import running_server

ROOT = Path(__file__).resolve().parent.parent
MODEL = "adaptive_diffusion"
FAST = dict(student_steps=2, teacher_steps=2)  # good requests: cheap, and still through every stage
LONG_PROMPT = "a very detailed photograph of " + "a red fox and " * 60 + "snow"  # > 77 CLIP tokens, < the byte cap


# ---------------------------------------------------------------------------------------------
# helpers


def _tensor(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def _prompt(*texts: str | bytes) -> grpcclient.InferInput:
    return _tensor("prompt", np.array([[t.encode() if isinstance(t, str) else t] for t in texts], dtype=np.object_), "BYTES")


def _request(prompts: list[str] | None = None, **settings: Any) -> list[grpcclient.InferInput]:
    prompts = prompts or ["a lighthouse at dusk"]
    return build_inputs(grpcclient, prompts, list(range(len(prompts))), **settings)


def _outputs() -> list[grpcclient.InferRequestedOutput]:
    return [grpcclient.InferRequestedOutput(f.name) for f in RESPONSE_FIELDS]


def _status(err: InferenceServerException) -> str:
    return str(err.status())


def _infer(url: str, inputs: list, **kwargs: Any):
    client = grpcclient.InferenceServerClient(url)
    try:
        return client.infer(MODEL, inputs, outputs=_outputs(), **kwargs)
    finally:
        client.close()


def _refused(url: str, inputs: list) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        _infer(url, inputs)
    return err.value


def _stats(url: str, model: str) -> dict[str, int]:
    client = grpcclient.InferenceServerClient(url)
    try:
        s = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    finally:
        client.close()
    # Triton's JSON leaves zero counters out.
    return {
        "executions": int(s.get("execution_count", 0)),
        "rows": int(s.get("inference_count", 0)),
        "success": int(s["inference_stats"].get("success", {}).get("count", 0)),
        "fail": int(s["inference_stats"].get("fail", {}).get("count", 0)),
    }


def _wait_for(what: str, probe: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float = 120.0) -> Any:
    """Poll ``probe()`` until ``done(value)``: a wait on observable state, never a fixed delay."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value} after {timeout_s:g}s")
        time.sleep(0.02)


def _answered(stats: dict[str, int]) -> int:
    return stats["success"] + stats["fail"]


def _wait_answered(url: str, model: str, count: int) -> dict[str, int]:
    """The model's statistics once ``count`` requests in all have been recorded (Triton records
    a request just after answering it)."""
    return _wait_for(f"{model} requests recorded", lambda: _stats(url, model), lambda s: _answered(s) >= count)


def _wait_teacher_busy(url: str, before: dict[str, int]) -> None:
    """Until unet_teacher has run a step since ``before``: the request ahead is inside its execute."""
    _wait_for("unet_teacher executions", lambda: _stats(url, "unet_teacher")["executions"], lambda n: n > before["executions"])


def _wait_bls_settled(server) -> dict[str, int]:
    """The BLS statistics once Triton has recorded every request the BLS answered.

    The BLS counts a request in ``adaptive_requests_total`` before it answers; Triton records it in
    its statistics just after. Until the two agree, a request of an earlier test is still landing.
    """

    def answered_by_bls() -> float:
        return sum(v for k, v in _scrape(server).items() if k.startswith("adaptive_requests_total{"))

    return _wait_for("BLS statistics settled", lambda: _stats(server.grpc_url, MODEL), lambda s: _answered(s) >= answered_by_bls())


def _async(client: grpcclient.InferenceServerClient, inputs: list, **kwargs: Any) -> tuple[threading.Event, dict, Any]:
    done, box = threading.Event(), {}

    def callback(result, error) -> None:
        box["result"], box["error"] = result, error
        done.set()

    ctx = client.async_infer(MODEL, inputs, callback=callback, outputs=_outputs(), **kwargs)
    return done, box, ctx


def _live(server) -> bool:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return client.is_server_live() and client.is_model_ready(MODEL)
    finally:
        client.close()


def _assert_good(result, rows: int = 1) -> None:
    image = result.as_numpy("image")
    assert image.dtype == np.uint8 and image.shape[0] == rows and image.shape[-1] == 3
    assert all(r.decode() in ("student", "refined", "regenerated", "teacher") for r in result.as_numpy("route").reshape(-1))


# ---------------------------------------------------------------------------------------------
# bad input that reaches the BLS: INVALID_ARG naming field, value and range; batch neighbours live

# Triton's dynamic batcher only puts requests with the same set of (optional) inputs in one
# execute, so every request here sends all the settings, good values except the one under test.
BASE = dict(negative_prompt="blurry", guidance_scale=7.5, student_steps=2, teacher_steps=2, sigma=0.7, strategy="refine")
_NUMPY = {"bytes": np.object_, "float32": np.float32, "int32": np.int32, "int64": np.int64}


def _full(prompts: list[str | bytes] | None = None, **fields: Any) -> list[grpcclient.InferInput]:
    """A request with every BASE setting; a list value gives one value per row."""
    prompts = prompts or ["a lighthouse at dusk"]
    n = len(prompts)
    values = {"prompt": prompts, "seed": list(range(n)), **{k: [v] * n for k, v in BASE.items()}}
    values.update({k: v if isinstance(v, list) else [v] * n for k, v in fields.items()})
    inputs = []
    for f in REQUEST_FIELDS:
        if f.name in values:
            column = [v.encode() if isinstance(v, str) else v for v in values[f.name]]
            inputs.append(_tensor(f.name, np.array([[v] for v in column], dtype=_NUMPY[f.dtype]), f.client_dtype))
    return inputs


# (case id, request fields, field named in the error, fragments the message must contain)
BLS_BAD_INPUTS: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    ("empty prompt", dict(prompts=[""]), "prompt", ("got ''", "blank")),
    ("blank prompt", dict(prompts=["   "]), "prompt", ("got '   '", "blank")),
    ("invisible prompt", dict(prompts=["\u200b\u3164\u200e"]), "prompt", ("\\u200b", "no visible character")),
    ("sigma whose refine schedule is too long", dict(teacher_steps=100, sigma=0.05), "sigma", ("teacher_steps=100", "exceed 1000 steps", "sigma >= teacher_steps / 1000")),
    ("sigma below the floor", dict(sigma=1e-30), "sigma", ("[0.001, 1]",)),
    ("non-UTF-8 prompt", dict(prompts=[b"\xff\xfe a cat"]), "prompt", ("\\xff\\xfe", "not valid UTF-8")),
    ("non-UTF-8 negative prompt", dict(negative_prompt=b"\xc3\x28"), "negative_prompt", ("not valid UTF-8",)),
    ("prompt over the byte cap", dict(prompts=["x" * (MAX_TEXT_BYTES + 1)]), "prompt", (f"got {MAX_TEXT_BYTES + 1} bytes", f"at most {MAX_TEXT_BYTES}")),
    ("zero student steps", dict(student_steps=0), "student_steps", ("got 0", str(LIMITS["student_steps"]))),
    ("negative student steps", dict(student_steps=-3), "student_steps", ("got -3", "[1, 50]")),
    ("too many student steps", dict(student_steps=51), "student_steps", ("got 51", "[1, 50]")),
    ("too many teacher steps", dict(teacher_steps=101), "teacher_steps", ("got 101", "[1, 100]")),
    ("zero teacher steps", dict(teacher_steps=0), "teacher_steps", ("got 0", "[1, 100]")),
    ("NaN guidance", dict(guidance_scale=float("nan")), "guidance_scale", ("got NaN", "[0, 30]")),
    ("infinite guidance", dict(guidance_scale=float("inf")), "guidance_scale", ("got inf", "[0, 30]")),
    ("negative guidance", dict(guidance_scale=-1.0), "guidance_scale", ("got -1", "[0, 30]")),
    ("zero sigma", dict(sigma=0.0), "sigma", ("got 0", "[0.001, 1]")),
    ("sigma over 1", dict(sigma=1.5), "sigma", ("got 1.5", "[0.001, 1]")),
    ("unknown strategy", dict(strategy="fastest"), "strategy", ("got 'fastest'", "refine, regenerate, student_only, teacher_only")),
    ("bad second row", dict(prompts=["a cat", "a dog"], sigma=[0.5, 2.0]), "sigma", ("got 2", "[0.001, 1]", "(row 1)")),
    ("NaN tau", dict(tau=float("nan")), "tau", ("got NaN", str(LIMITS["tau"]))),
    ("negative k", dict(k=-1.0), "k", ("got -1", "[0, 100]")),
    ("k over 100", dict(k=100.5), "k", ("got 100.5", "[0, 100]")),
    # Any request with both is bad, so this one has no good neighbour with its input set.
    ("tau and k", dict(tau=0.1, k=50.0), "tau", ("tau=0.1", "k=50", "not both")),
]
# The good requests sent in the same wave as the bad ones of each set of gate inputs (tau, k).
GOOD_NEIGHBOURS: dict[frozenset[str], list[dict[str, Any]]] = {
    # The largest seeds are good too (above 2**53 a float would round them).
    frozenset(): [dict(), dict(prompts=[LONG_PROMPT], seed=2**63 - 1)],
    frozenset({"tau"}): [dict(tau=LIMITS["tau"].low)],
    frozenset({"k"}): [dict(k=50.0)],
    frozenset({"tau", "k"}): [],
}


def _waves(size: int = 6) -> list[tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any], str, tuple[str, ...]]]]]:
    """Bad cases grouped by input set, at most ``size`` per wave, each with its good neighbours."""
    by_set: dict[frozenset[str], list] = {}
    for case in BLS_BAD_INPUTS:
        by_set.setdefault(frozenset(case[1]) & {"tau", "k"}, []).append(case)
    return [(GOOD_NEIGHBOURS[key], cases[i : i + size]) for key, cases in by_set.items() for i in range(0, len(cases), size)]


# Requests Triton's frontend refuses before any execute (dtype, shape, batch size, unknown input).
FRONTEND_BAD_INPUTS: list[tuple[str, Callable[[], list], tuple[str, ...]]] = [
    ("UINT64 seed", lambda: [_prompt("a cat"), _tensor("seed", np.array([[2**64 - 1]], dtype=np.uint64), "UINT64")], ("'seed'", "UINT64", "INT64")),
    ("string seed", lambda: [_prompt("a cat"), _tensor("seed", np.array([[b"12"]], dtype=np.object_), "BYTES")], ("'seed'", "BYTES", "INT64")),
    ("float seed", lambda: [_prompt("a cat"), _tensor("seed", np.array([[1.5]], dtype=np.float32), "FP32")], ("'seed'", "FP32", "INT64")),
    ("numeric prompt", lambda: [_tensor("prompt", np.array([[1]], dtype=np.int32), "INT32")], ("'prompt'", "INT32", "BYTES")),
    ("two prompts in one row", lambda: [_tensor("prompt", np.array([[b"a", b"b"]], dtype=np.object_), "BYTES")], ("'prompt'", "shape")),
    ("nine rows", lambda: _request([f"prompt {i}" for i in range(9)]), ("batch-size must be <= 8",)),
    ("unknown input", lambda: [_prompt("a cat"), _tensor("bogus", np.array([[1]], dtype=np.int64), "INT64")], ("'bogus'",)),
]


@pytest.mark.server
def test_every_bad_input_gets_invalid_arg_naming_field_value_and_range_while_concurrent_requests_succeed(tiny_server):
    # The BLS runs every request in an execution of its own (several instances; its batcher only queues),
    # so a wave sent together is in flight at once; that a bad request also fails alone inside one
    # execute shared with good ones is BatchRunner's job, specified without a server.
    url = tiny_server.grpc_url
    client = grpcclient.InferenceServerClient(url)
    try:
        for good, bad in _waves():
            pending = [_async(client, _full(**fields)) for fields in good[:1]]
            pending += [_async(client, _full(**fields)) for _, fields, _, _ in bad]
            pending += [_async(client, _full(**fields)) for fields in good[1:]]
            for done, _, _ in pending:
                assert done.wait(120)

            boxes = [box for _, box, _ in pending]
            first = len(good[:1])
            good_boxes, bad_boxes = boxes[:first] + boxes[first + len(bad) :], boxes[first : first + len(bad)]
            for fields, box in zip(good, good_boxes):
                assert box["error"] is None, box["error"]
                _assert_good(box["result"])
                truncated = bool(box["result"].as_numpy("truncated")[0, 0])
                assert truncated == (fields.get("prompts") == [LONG_PROMPT]), "over 77 CLIP tokens is truncated, and says so"
            for (case, _, field, fragments), box in zip(bad, bad_boxes):
                err = box["error"]
                assert err is not None, f"{case}: accepted"
                assert "INVALID_ARGUMENT" in _status(err), f"{case}: {_status(err)}"
                assert err.message().startswith(f"{field}: "), f"{case}: {err.message()}"
                for fragment in fragments:
                    assert fragment in err.message(), f"{case}: {fragment!r} not in {err.message()!r}"
    finally:
        client.close()
    assert _live(tiny_server)


@pytest.mark.server
def test_requests_the_frontend_refuses_name_the_input_and_leave_a_concurrent_good_request_alone(tiny_server):
    client = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    try:
        done, box, _ = _async(client, _request(**FAST))
        for case, make, fragments in FRONTEND_BAD_INPUTS:
            with pytest.raises(InferenceServerException) as err:
                client.infer(MODEL, make())
            assert "INVALID_ARGUMENT" in _status(err.value), case
            for fragment in fragments:
                assert fragment in err.value.message(), f"{case}: {fragment!r} not in {err.value.message()!r}"
        assert done.wait(120) and box["error"] is None, box.get("error")
        _assert_good(box["result"])
    finally:
        client.close()
    assert _live(tiny_server)


@pytest.mark.server
def test_an_http_json_seed_outside_int64_is_refused_before_the_model(tiny_server):
    # tritonclient cannot even build it; raw JSON can. Triton's JSON parser refuses the value
    # (as a 400/500 "Unable to parse 'data'") and nothing reaches the BLS.
    body = {
        "inputs": [
            {"name": "prompt", "datatype": "BYTES", "shape": [1, 1], "data": ["a cat"]},
            {"name": "seed", "datatype": "INT64", "shape": [1, 1], "data": [2**64 - 1]},
        ]
    }
    before = _wait_bls_settled(tiny_server)
    request = urllib.request.Request(f"http://{tiny_server.http_url}/v2/models/{MODEL}/infer", data=json.dumps(body).encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code in (400, 500) and "parse" in err.value.read().decode()
    assert _stats(tiny_server.grpc_url, MODEL)["executions"] == before["executions"]
    assert _live(tiny_server)


# ---------------------------------------------------------------------------------------------
# cancellation and deadlines


@pytest.mark.server
@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_a_cancelled_request_stops_consuming_teacher_steps(tiny_server, how):
    url = tiny_server.grpc_url
    steps = LIMITS["teacher_steps"].high  # 100 teacher calls if it ran to the end
    cancelled = 'adaptive_requests_total{outcome="cancelled"}'
    client = grpcclient.InferenceServerClient(url)
    try:
        before = _stats(url, "unet_teacher")
        cancelled_before = _scrape(tiny_server).get(cancelled, 0.0)
        # Eight rows, so that 100 steps take far longer than the 0.4 s deadline on any machine.
        inputs = _request(["cancel me"] * 8, strategy="teacher_only", teacher_steps=int(steps))
        if how == "cancel":
            done, box, ctx = _async(client, inputs)
            _wait_teacher_busy(url, before)  # the request is at its teacher steps
            ctx.cancel()
            assert done.wait(30)
            assert "CANCELLED" in _status(box["error"])
        else:
            with pytest.raises(InferenceServerException) as err:
                client.infer(MODEL, inputs, client_timeout=0.4)
            assert "DEADLINE_EXCEEDED" in _status(err.value)
        # The BLS checks request.is_cancelled() between denoising steps and gives up the batch: it
        # counts the request as cancelled (a request that ran to the end would count as a success).
        _wait_for("the cancelled request's outcome", lambda: _scrape(tiny_server).get(cancelled, 0.0), lambda n: n >= cancelled_before + 1)
        spent = _stats(url, "unet_teacher")["success"] - before["success"]
        assert spent < steps, f"all {steps} teacher steps ran after the client gave up"
        assert _scrape(tiny_server)[cancelled] == cancelled_before + 1
        _assert_good(client.infer(MODEL, _request(**FAST), outputs=_outputs()))
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# access control


ADMIN_HTTP = [
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/unet_teacher/unload"),
    ("GET", "/v2/logging"),
    ("GET", "/v2/trace/setting"),
    ("GET", "/v2/systemsharedmemory/status"),
]
OPEN_HTTP = [("GET", "/v2/health/ready"), ("GET", f"/v2/models/{MODEL}"), ("GET", f"/v2/models/{MODEL}/config"), ("GET", f"/v2/models/{MODEL}/stats")]


def _http(server, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{server.http_url}{path}", method=method, headers=headers or {}, data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.server
def test_admin_http_endpoints_need_the_key_and_the_rest_stay_open(tiny_server):
    key = tiny_server.admin_headers("http")
    wrong = {name: "x" * 32 for name in key}
    for method, path in ADMIN_HTTP:
        for headers in (None, wrong):
            code, body = _http(tiny_server, method, path, headers)
            assert code == 403 and "restricted" in body, (method, path, code, body)
        code, body = _http(tiny_server, method, path, key)
        # With the key the call goes through; unload still fails, on model-control-mode none.
        assert code != 403, (method, path, body)
        assert code == 200 or "not allowed" in body, (method, path, code, body)
    for method, path in OPEN_HTTP:
        assert _http(tiny_server, method, path)[0] == 200, path


@pytest.mark.server
def test_admin_grpc_calls_need_the_key_and_inference_does_not(tiny_server):
    client = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    key = tiny_server.admin_headers("grpc")
    calls = {
        "repository index": lambda h: client.get_model_repository_index(headers=h),
        "log settings": lambda h: client.get_log_settings(headers=h),
        "trace settings": lambda h: client.get_trace_settings(headers=h),
        "shared memory": lambda h: client.get_system_shared_memory_status(headers=h),
    }
    try:
        for name, call in calls.items():
            with pytest.raises(InferenceServerException, match="restricted") as err:
                call(None)
            assert "UNAVAILABLE" in _status(err.value), name
            call(key)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.unload_model("unet_teacher")
        assert client.get_inference_statistics(MODEL) and client.get_model_metadata(MODEL)
        _assert_good(client.infer(MODEL, _request(student_steps=1, strategy="student_only"), outputs=_outputs()))
    finally:
        client.close()


def test_the_launcher_restricts_admin_apis_with_the_operators_key_or_a_random_one(tmp_path, monkeypatch):
    from export.launcher.config import ADMIN_KEY_ENV, RESTRICTED_APIS
    from export.launcher.process import TritonServer

    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    a, b = TritonServer(tmp_path), TritonServer(tmp_path)
    assert a.admin_key != b.admin_key and len(a.admin_key) >= 32, "no key given: a fresh random one per launcher"
    rule = f"{','.join(RESTRICTED_APIS)}:admin-key={a.admin_key}"
    assert f"--http-restricted-api={rule}" in a.command() and f"--grpc-restricted-protocol={rule}" in a.command()
    assert a.admin_headers("grpc") == {"triton-grpc-protocol-admin-key": a.admin_key}

    monkeypatch.setenv(ADMIN_KEY_ENV, "operator-key-0123456789")
    assert TritonServer(tmp_path).admin_key == "operator-key-0123456789"
    assert TritonServer(tmp_path, admin_key="explicit-key-0123456789").admin_key == "explicit-key-0123456789"
    for bad in ("short", "has:colon-0123456789", "has,comma-0123456789", "has=equals-0123456789"):
        with pytest.raises(ValueError, match="admin key"):
            TritonServer(tmp_path, admin_key=bad)
    # An operator's own restriction flags replace the launcher's policy instead of clashing with it.
    own = TritonServer(tmp_path, extra_args=["--http-restricted-api=trace:k=v"]).command()
    assert not any(arg.startswith("--grpc-restricted-protocol") for arg in own)
    assert [arg for arg in own if arg.startswith("--http-restricted-api")] == ["--http-restricted-api=trace:k=v"]


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _project_sources() -> list[Path]:
    dirs = ("bll_python", "export", "clients", "benchmarks", "model_repository", "tests")
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def test_checkpoints_never_load_through_pickle():
    offences = []
    for path in _project_sources():
        for call, name in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            kwargs = {k.arg: k.value for k in call.keywords}
            if name == "torch.load":
                safe = kwargs.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    offences.append(f"{where}: torch.load without weights_only=True")
            if name.startswith(("pickle.", "cPickle.", "dill.", "joblib.")) and name.split(".")[-1] in ("load", "loads", "Unpickler"):
                offences.append(f"{where}: {name}")
            if name.endswith("np.load") or name == "numpy.load":
                allow = kwargs.get("allow_pickle")
                if isinstance(allow, ast.Constant) and allow.value is True:
                    offences.append(f"{where}: np.load(allow_pickle=True)")
    assert not offences, offences


def test_no_request_field_can_name_a_file():
    # The request path (parse -> settings -> pipeline -> response) opens nothing: files are read
    # from the model repository at initialize() only, from paths in the model config.
    request_path = ["bll_python/serving.py", "bll_python/settings.py", "bll_python/contract.py", "bll_python/pipeline.py"]
    for rel in request_path:
        for call, name in _calls(ast.parse((ROOT / rel).read_text())):
            assert name not in ("open", "Path", "os.open", "io.open") and not name.startswith(("os.path", "shutil.")), f"{rel}:{call.lineno}: {name}"
    execute = ast.parse((ROOT / "model_repository/adaptive_diffusion/1/model.py").read_text())
    for node in ast.walk(execute):
        if isinstance(node, ast.FunctionDef) and node.name in ("execute", "_parse"):
            for call, name in _calls(node):
                assert name not in ("open", "Path"), f"model.py {node.name}: {name}"


# ---------------------------------------------------------------------------------------------
# metrics


def _scrape(server) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=30) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("adaptive_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@pytest.mark.server
def test_custom_metrics_count_a_known_sequence_of_requests(tiny_server):
    url = tiny_server.grpc_url
    before = _scrape(tiny_server)
    _infer(url, _request(["a", "b", "c"], strategy="student_only", student_steps=2))
    _infer(url, _request(["d", "e"], strategy="teacher_only", teacher_steps=2))
    # Three rows clear the gate and one is refined: a gate that sent the wrong side counts 1 and 3.
    _infer(url, _request(["f", "g", "h"], tau=LIMITS["tau"].low, **FAST))  # every row clears the gate
    _infer(url, _request(["i"], tau=LIMITS["tau"].high, **FAST))  # every row is refined
    _refused(url, _request(sigma=2.0))
    after = _scrape(tiny_server)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta('adaptive_rows_total{route="student"}') == 3 + 3
    assert delta('adaptive_rows_total{route="teacher"}') == 2
    assert delta('adaptive_rows_total{route="refined"}') == 1
    assert delta('adaptive_rows_total{route="regenerated"}') == 0
    assert delta("adaptive_teacher_rows_total") == 2 + 1
    assert delta("adaptive_gated_rows_total") == 4 and delta("adaptive_accepted_rows_total") == 3
    assert after["adaptive_accept_rate"] == pytest.approx(after["adaptive_accepted_rows_total"] / after["adaptive_gated_rows_total"])
    assert delta('adaptive_requests_total{outcome="success"}') == 4
    assert delta('adaptive_requests_total{outcome="invalid_arg"}') == 1
    # student_only 3 x 2, teacher_only 2 x 2, accepted 3 x 2, refined 1 x (2 student + 2 teacher)
    assert delta("adaptive_unet_steps_total") == 6 + 4 + 6 + 4
    # Per-stage latency histograms: one observation per pipeline batch that ran the stage.
    for stage, batches in {"text": 4, "student": 3, "reward": 4, "teacher": 2, "decode": 5}.items():
        assert delta(f'adaptive_stage_seconds_count{{stage="{stage}"}}') == batches, stage
        assert delta(f'adaptive_stage_seconds_bucket{{stage="{stage}",le="+Inf"}}') == batches, stage
        assert delta(f'adaptive_stage_seconds_sum{{stage="{stage}"}}') > 0, stage


# ---------------------------------------------------------------------------------------------
# faults: a server of its own over a repository with a fault-injecting unet_teacher

FAULT_MODEL = '''\
"""unet_teacher for tests: the ONNX Runtime model, with a fault the test switches by a flag file."""
import importlib.util
import json
import os
import time

_spec = importlib.util.spec_from_file_location("ort_component", os.path.join(os.path.dirname(__file__), "ort_component.py"))
_ort = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ort)


class TritonPythonModel(_ort.TritonPythonModel):
    def initialize(self, args):
        super().initialize(args)
        self.flag = json.loads(args["model_config"])["parameters"]["fault_flag"]["string_value"]

    def execute(self, requests):
        try:
            with open(self.flag) as f:
                mode = f.read().strip()
        except FileNotFoundError:
            mode = ""
        if mode == "raise":
            raise RuntimeError("injected fault")
        if mode.startswith("sleep:"):
            open(self.flag + ".busy", "w").close()  # tells the test this call is under way
            time.sleep(float(mode.split(":", 1)[1]))
        return super().execute(requests)
'''
COMPONENT_TIMEOUT_MS = 1000


def write_fault_repository(source: Path, target: Path, flag: Path) -> Path:
    """A copy of ``source`` whose single unet_teacher instance fails on demand and honours BLS call timeouts."""
    shutil.copytree(source, target)
    teacher = target / "unet_teacher"
    (teacher / "1" / "model.py").rename(teacher / "1" / "ort_component.py")
    (teacher / "1" / "model.py").write_text(FAULT_MODEL)
    config = read_model_config(target, "unet_teacher")
    # Triton only applies a request's timeout on a model that allows overriding its queue policy;
    # the generated component configs must carry one for the BLS call timeouts to mean anything.
    assert config.dynamic_batching.default_queue_policy.allow_timeout_override, "component configs lost their queue policy"
    config.parameters["fault_flag"].string_value = str(flag)
    # One teacher instance: a fault (or a sleep that fills the queue) then reaches every teacher call.
    (group,) = config.instance_group
    group.count = 1
    write_config(target, config)
    bls = read_model_config(target, MODEL)
    assert "component_timeout_ms" in bls.parameters, "the BLS config lost its component_timeout_ms parameter"
    bls.parameters["component_timeout_ms"].string_value = str(COMPONENT_TIMEOUT_MS)
    write_config(target, bls)
    return target


@pytest.fixture(scope="module")
def fault_flag(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fault") / "unet_teacher.fault"


@pytest.fixture(scope="module")
def fault_server(tiny_repository, fault_flag, tmp_path_factory):
    repository = write_fault_repository(tiny_repository, tmp_path_factory.mktemp("fault_repo") / "repository", fault_flag)
    # A short exit timeout: after a stub crash the server waits that long for the dead model.
    with running_server(repository, exit_timeout=2, stop_timeout=5) as server:
        yield server


@pytest.fixture
def fault(fault_flag):
    def inject(mode: str) -> None:
        fault_flag.write_text(mode)

    yield inject
    fault_flag.unlink(missing_ok=True)


TEACHER = dict(strategy="teacher_only", teacher_steps=2)
STUDENT = dict(strategy="student_only", student_steps=2)


@pytest.mark.server
def test_a_failing_component_fails_only_the_requests_that_reach_it_then_serving_resumes(fault_server, fault):
    url = fault_server.grpc_url
    _assert_good(_infer(url, _request(**TEACHER)))
    failed = 'adaptive_component_errors_total{component="unet_teacher"}'
    before = _scrape(fault_server)
    fault("raise")
    err = _refused(url, _request(**TEACHER))
    assert "INTERNAL" in _status(err)
    assert err.message().startswith("component unet_teacher:") and "injected fault" in err.message()
    assert "model.py" not in err.message(), "the stub's traceback (server paths) stays in the server log"
    assert "injected fault" in fault_server.log_tail(200) and "model.py" in fault_server.log_tail(200)
    assert _scrape(fault_server)[failed] == before[failed] + 1
    _assert_good(_infer(url, _request(**STUDENT)))  # no teacher involved: unaffected
    fault("")
    _assert_good(_infer(url, _request(**TEACHER)))
    assert _live(fault_server)


@pytest.mark.server
def test_a_component_call_that_waits_past_component_timeout_ms_is_unavailable_naming_it(fault_server, fault, fault_flag, deployment):
    url = fault_server.grpc_url
    fault("sleep:3")
    spec = deployment.specs()["unet_teacher"]
    direct = []
    for t in spec.inputs:
        # One row at the native size; per-row scalars travel as [B, 1].
        shape = list(t.shape(spec.sizes(**{BATCH: 1}))) if len(t.dims) > 1 else [1, 1]
        direct.append(_tensor(t.name, np.zeros(shape, dtype=np.float32), "FP32"))
    client = grpcclient.InferenceServerClient(url)
    busy = Path(str(fault_flag) + ".busy")
    busy.unlink(missing_ok=True)
    occupied = threading.Thread(target=lambda: client.infer("unet_teacher", direct))
    occupied.start()  # the teacher sleeps 3 s on this call; the BLS's call waits in its queue
    try:
        _wait_for("the teacher to take the occupying call", busy.exists, bool)
        err = _refused(url, _request(**TEACHER))
        # Answered while the teacher still holds the occupying call: the BLS call gave up in the queue.
        assert occupied.is_alive(), "the call waited for the teacher instead of timing out"
        assert "UNAVAILABLE" in _status(err)
        assert err.message().startswith("component unet_teacher:") and "timeout" in err.message().lower()
    finally:
        occupied.join()
        client.close()
    fault("")
    _assert_good(_infer(url, _request(**TEACHER)))


def _stub(server, instance: str) -> tuple[int, str]:
    pid = server.stub_processes()[instance]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return pid, argv[2].decode()  # the stub's shared-memory region


@pytest.mark.server
def test_a_killed_stub_gives_a_clear_error_and_a_launcher_restart_heals_it(fault_server):
    # Triton 2.51's Python backend does not restart a dead stub and still reports the model READY:
    # every request that reaches it fails until the server restarts (the launcher's watchdog does
    # that: `python -m export.launcher --on-stub-crash restart`, built on crashed_stubs()/restart()).
    url = fault_server.grpc_url
    assert fault_server.crashed_stubs() == []
    pid, region = _stub(fault_server, "unet_teacher_0_0")
    assert (Path("/dev/shm") / region).exists()
    os.kill(pid, signal.SIGKILL)

    err = _refused(url, _request(**TEACHER))
    assert "UNAVAILABLE" in _status(err)
    assert err.message().startswith("component unet_teacher:") and "not healthy" in err.message()
    _assert_good(_infer(url, _request(**STUDENT)))  # the rest of the server still serves
    assert _live(fault_server)
    assert fault_server.crashed_stubs() == ["unet_teacher_0_0"]

    fault_server.restart(timeout=5)
    assert fault_server.crashed_stubs() == []
    assert not (Path("/dev/shm") / region).exists(), "the dead stub's shared memory outlived its server"
    _assert_good(_infer(url, _request(**TEACHER)))
