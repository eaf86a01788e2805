"""The BLS ``execute`` (model_repository/adaptive_diffusion/1/model.py) without a server.

``pb_utils`` is a fake whose component calls run cheap deterministic engines in-process, so one
``execute`` can be handed any mix of requests, deterministically, with no timing involved. Read as
the specification of what a Triton batch (one ``execute``) answers:

- every row's answer equals that row generated alone with its own settings, in its request's order,
  whatever else arrived in the same execute (rows whose settings differ in any one field are never
  run as if they shared settings);
- only rows scoring below their tau reach the teacher, and the metrics count what was served;
- a request that fails (bad input, a component fault on its route, its cancellation) fails alone.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from bll_python.settings import GenerationSettings
from tests.fakes import MAX_ROWS, FakePbUtils, FakeRequest, bls_initialize_args, fake_deployment, fake_engines, fake_pipeline, load_bls_model, write_fake_repository

# Percentiles -100..100: k = 10 puts tau at -80 (every fake score, about -7..-5, clears it) and
# k = 90 at +80 (every row goes to the teacher).
PERCENTILES = [float(x) for x in np.linspace(-100, 100, 101)]
PROMPTS = ["a red fox in the snow", "a koi pond", "two cats on a sofa", "an old lighthouse at dusk", "a bowl of ramen", "a knight in armor", "a glass of water"]
BASE: dict[str, Any] = dict(guidance_scale=7.5, student_steps=2, teacher_steps=2, sigma=0.7, strategy="refine", tau=1e6)

# For each setting, two values that give a row different images: a batch that ran rows of both
# values with one value would answer one of them wrongly.
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "guidance_scale": (dict(BASE), dict(BASE, guidance_scale=3.0)),
    "student_steps": (dict(BASE), dict(BASE, student_steps=3)),
    "teacher_steps": (dict(BASE), dict(BASE, teacher_steps=3)),
    "sigma": (dict(BASE), dict(BASE, sigma=0.3)),
    "strategy": (dict(BASE), dict(BASE, strategy="regenerate")),
    "tau": (dict(BASE), dict(BASE, tau=-1e6)),
    "k": ({**{k: v for k, v in BASE.items() if k != "tau"}, "k": 90.0}, {**{k: v for k, v in BASE.items() if k != "tau"}, "k": 10.0}),
}

_NUMPY = {"prompt": np.object_, "negative_prompt": np.object_, "strategy": np.object_, "seed": np.int64, "student_steps": np.int32, "teacher_steps": np.int32}


def request(rows: list[tuple[str, int, dict[str, Any]]], negative: list[str] | None = None, cancelled: Callable[[], bool] = lambda: False) -> FakeRequest:
    """One request of ``(prompt, seed, settings)`` rows; every row names the same settings."""
    names = set(rows[0][2])
    assert all(set(s) == names for _, _, s in rows), "a tensor holds one value per row: every row gives the same fields"
    columns: dict[str, list] = {"prompt": [p.encode() for p, _, _ in rows], "seed": [s for _, s, _ in rows]}
    if negative is not None:
        columns["negative_prompt"] = [n.encode() for n in negative]
    for name in sorted(names):
        columns[name] = [v.encode() if isinstance(v, str) else v for v in (s[name] for _, _, s in rows)]
    return FakeRequest({n: np.array([[v] for v in col], dtype=_NUMPY.get(n, np.float32)) for n, col in columns.items()}, cancelled)


@pytest.fixture(scope="module")
def deployment():
    return fake_deployment(PERCENTILES)


@pytest.fixture(scope="module")
def repository(tmp_path_factory, deployment):
    return write_fake_repository(tmp_path_factory.mktemp("fake_bls"), deployment)


@pytest.fixture(scope="module")
def alone(repository, deployment):
    """``alone(prompt, seed, settings, negative)``: the pipeline on that one row, nothing else."""
    pipe = fake_pipeline(repository, deployment)

    def run(prompt: str, seed: int, settings: dict[str, Any], negative: str = ""):
        return pipe([prompt], [seed], GenerationSettings(**settings), [negative])

    return run


class Server:
    """The BLS model as Triton holds it: initialized once, then ``execute`` per dynamic batch."""

    def __init__(self, repository, deployment) -> None:
        self.engines = fake_engines(deployment)
        self.pb = FakePbUtils(self.engines)
        self.model = load_bls_model(self.pb).TritonPythonModel()
        self.model.initialize(bls_initialize_args(repository))

    def execute(self, requests: list[FakeRequest]):
        responses = self.model.execute(requests)
        assert len(responses) == len(requests), "one response per request"
        return responses

    def teacher_rows(self) -> int:
        return sum(rows for name, rows in self.pb.component_calls if name == "unet_teacher")


@pytest.fixture
def server(repository, deployment) -> Server:
    return Server(repository, deployment)


def assert_answers(response, expected: list[tuple[str, int, dict[str, Any]]], alone, negative: list[str] | None = None) -> None:
    assert not response.has_error(), response.error().message()
    out = response.as_dict()
    assert out["image"].shape[0] == len(expected), "one image per row"
    for i, (prompt, seed, settings) in enumerate(expected):
        ref = alone(prompt, seed, settings, negative[i] if negative else "")
        where = f"row {i} ({prompt!r}, {settings})"
        np.testing.assert_array_equal(out["image"][i], ref.images[0], err_msg=where)
        assert out["score"][i, 0] == ref.scores[0], where
        assert out["route"][i, 0].decode() == ref.routes[0].value, where
        assert out["unet_steps"][i, 0] == ref.unet_steps[0], where


# ---------------------------------------------------------------------------------------------
# grouping: each row keeps its own settings


@pytest.mark.parametrize("field", list(VARIANTS))
def test_rows_differing_only_in_one_setting_each_equal_that_row_generated_alone(server, alone, field):
    a, b = VARIANTS[field]
    assert alone(PROMPTS[0], 0, a).images.tobytes() != alone(PROMPTS[0], 0, b).images.tobytes(), f"{field}: the two values must change the image"
    # Within one request (per-row settings) and across requests of the same execute.
    mixed = [(PROMPTS[0], 0, a), (PROMPTS[1], 1, b), (PROMPTS[2], 2, a)]
    first, second = [(PROMPTS[3], 3, b)], [(PROMPTS[4], 4, a)]
    responses = server.execute([request(mixed), request(first), request(second)])
    for response, rows in zip(responses, (mixed, first, second)):
        assert_answers(response, rows, alone)


def test_a_group_larger_than_max_rows_is_answered_row_for_row_in_request_order(server, alone):
    # 7 rows of one setting, in requests of 3, 1 and 3 rows: more than MAX_ROWS per pipeline batch.
    rows = [(p, 10 + i, dict(BASE, tau=None, k=50.0)) for i, p in enumerate(PROMPTS)]
    for row in rows:
        del row[2]["tau"]
    parts = [rows[:3], rows[3:4], rows[4:]]
    assert len(rows) > MAX_ROWS
    responses = server.execute([request(part) for part in parts])
    for response, part in zip(responses, parts):
        assert_answers(response, part, alone)
    # Triton refuses component calls over max_batch_size (the fake asserts it for each call).
    assert server.pb.component_calls, "the components were called"


def test_negative_prompts_reach_the_unconditional_branch_row_by_row(server, alone):
    rows = [(PROMPTS[0], 5, dict(BASE)), (PROMPTS[0], 5, dict(BASE))]
    negative = ["blurry, low quality", ""]
    (response,) = server.execute([request(rows, negative)])
    assert_answers(response, rows, alone, negative)
    out = response.as_dict()["image"]
    assert out[0].tobytes() != out[1].tobytes(), "the negative prompt changed nothing"


# ---------------------------------------------------------------------------------------------
# the gate


def _scores(alone, rows) -> list[float]:
    return [float(alone(p, s, dict(BASE, strategy="student_only")).scores[0]) for p, s, _ in rows]


def test_only_rows_scoring_below_tau_reach_the_teacher_and_the_metrics_count_them(server, alone):
    rows5 = [(p, i, {}) for i, p in enumerate(PROMPTS[:5])]
    scores = _scores(alone, rows5)
    order = np.argsort(scores)
    tau = (scores[order[1]] + scores[order[2]]) / 2  # two rows below, three above: an inverted gate sends three
    rejected = {int(i) for i in order[:2]}
    assert sum(s < tau for s in scores) == 2 and min(abs(s - tau) for s in scores) > 1e-3
    rows = [(p, s, dict(BASE, tau=tau)) for p, s, _ in rows5]
    (response,) = server.execute([request(rows)])
    assert_answers(response, rows, alone)
    routes = [r.decode() for r in response.as_dict()["route"][:, 0]]
    assert routes == ["refined" if i in rejected else "student" for i in range(5)]
    # CFG doubles each teacher call; every teacher step carries exactly the rejected rows.
    assert server.teacher_rows() == 2 * len(rejected) * BASE["teacher_steps"]
    pb = server.pb
    assert pb.metric("adaptive_teacher_rows_total") == len(rejected)
    assert pb.metric("adaptive_rows_total", route="refined") == len(rejected)
    assert pb.metric("adaptive_rows_total", route="student") == 5 - len(rejected)
    assert pb.metric("adaptive_gated_rows_total") == 5 and pb.metric("adaptive_accepted_rows_total") == 5 - len(rejected)
    assert pb.metric("adaptive_accept_rate") == pytest.approx(3 / 5)
    assert pb.metric("adaptive_requests_total", outcome="success") == 1
    # Every stage that ran reports its latency, the teacher's included.
    stages = {m.labels["stage"]: len(m.observations) for m in pb.families["adaptive_stage_seconds"].metrics}
    assert all(stages[s] >= 1 for s in ("text", "student", "decode", "reward", "teacher")), stages


def test_k_selects_the_kth_calibrated_percentile_as_tau(server, alone, deployment):
    # tau(25) = -50 and tau(75) = +50 on these percentiles; a mirrored mapping swaps them.
    rows = [(PROMPTS[0], 1, {**{k: v for k, v in BASE.items() if k != "tau"}, "k": 25.0})]
    assert deployment.resolve_tau(GenerationSettings(**rows[0][2])) == pytest.approx(-50.0)
    (response,) = server.execute([request(rows)])
    assert response.as_dict()["route"][0, 0].decode() == "student"  # about -6 clears -50
    rows = [(PROMPTS[0], 1, {**rows[0][2], "k": 75.0})]
    (response,) = server.execute([request(rows)])
    assert response.as_dict()["route"][0, 0].decode() == "refined"  # ... but not +50


# ---------------------------------------------------------------------------------------------
# failing alone


def test_a_bad_request_gets_invalid_arg_naming_the_field_and_its_batch_neighbours_their_images(server, alone):
    good = [(PROMPTS[0], 0, dict(BASE))]
    bad = request([(PROMPTS[1], 1, dict(BASE, sigma=1.5))])
    responses = server.execute([request(good), bad, request(good)])
    assert_answers(responses[0], good, alone)
    assert_answers(responses[2], good, alone)
    error = responses[1].error()
    assert error.code() == "INVALID_ARG" and error.message().startswith("sigma: ") and "[0.001, 1]" in error.message()
    assert server.pb.metric("adaptive_requests_total", outcome="invalid_arg") == 1


def test_a_component_fault_fails_only_the_requests_whose_rows_reach_that_component(server, alone):
    server.engines.unet_teacher.fail = "injected fault"
    refined = [(PROMPTS[0], 0, dict(BASE, tau=1e6))]  # reaches the teacher
    accepted = [(PROMPTS[1], 1, dict(BASE, tau=-1e6))]  # same strategy, clears the gate
    student = [(PROMPTS[2], 2, dict(BASE, strategy="student_only"))]
    responses = server.execute([request(refined), request(accepted), request(student)])
    error = responses[0].error()
    assert error.code() == "INTERNAL" and error.message() == "component unet_teacher: injected fault"
    assert_answers(responses[1], accepted, alone)
    assert_answers(responses[2], student, alone)
    assert server.pb.metric("adaptive_component_errors_total", component="unet_teacher") == 1
    assert any("injected fault" in line for line in server.pb.errors_logged), "the operator's log has the fault"


def test_a_cancelled_request_stops_at_the_next_step_and_the_others_are_answered(server, alone):
    # The client cancels while the teacher runs its first step: an event, not a delay.
    teacher = server.engines.unet_teacher
    cancel = {"now": False}
    teacher.after_call = lambda engine: cancel.update(now=True)
    doomed = [(PROMPTS[0], 0, dict(BASE, strategy="teacher_only", teacher_steps=5))]
    other = [(PROMPTS[1], 1, dict(BASE, strategy="student_only"))]
    responses = server.execute([request(doomed, cancelled=lambda: cancel["now"]), request(other)])
    error = responses[0].error()
    assert error is not None and error.code() == "CANCELLED"
    assert len(teacher.calls) == 1, f"the teacher ran {len(teacher.calls)} of 5 steps after the cancellation"
    assert_answers(responses[1], other, alone)
    assert server.pb.metric("adaptive_requests_total", outcome="cancelled") == 1


def test_a_request_sharing_a_batch_with_a_cancelled_one_still_gets_its_images(server, alone):
    cancel = {"now": False}
    server.engines.unet_student.after_call = lambda engine: cancel.update(now=True)
    settings = dict(BASE, tau=-1e6)
    doomed, kept = [(PROMPTS[0], 0, settings)], [(PROMPTS[1], 1, settings)]
    responses = server.execute([request(doomed, cancelled=lambda: cancel["now"]), request(kept)])
    assert_answers(responses[1], kept, alone)
    # The cancelled one may be answered (its rows were done) or refused as cancelled, nothing else.
    if responses[0].has_error():
        assert responses[0].error().code() == "CANCELLED"
    else:
        assert_answers(responses[0], doomed, alone)


# ---------------------------------------------------------------------------------------------
# the load policy: the BLS reads the server-wide rows in flight and reports the k it used


@pytest.fixture
def policy_server(tmp_path, deployment) -> Server:
    from dataclasses import replace

    from bll_python.load_policy import LoadPolicySettings

    # One step to the floor as soon as more than 4 rows are in flight (this request's rows included).
    policy = LoadPolicySettings(floor_k=10.0, high_load=4, low_load=1, step=1.0, step_down_every_s=0.0, step_up_after_s=3600.0)
    with_policy = replace(deployment, load_policy=policy)
    return Server(write_fake_repository(tmp_path, with_policy), with_policy)


def _k_request(k: float, exact: bool | None = None, rows: int = 1) -> FakeRequest:
    settings: dict[str, Any] = {**{n: v for n, v in BASE.items() if n != "tau"}, "k": k}
    r = request([(PROMPTS[i], i, settings) for i in range(rows)])
    if exact is not None:
        r.tensors["exact_k"] = np.full((rows, 1), exact, dtype=np.bool_)
    return r


def test_the_bls_lowers_k_when_other_instances_hold_many_rows_and_reports_it(policy_server, alone):
    in_flight = policy_server.pb.families["adaptive_rows_in_flight"].metrics[0]
    (quiet,) = policy_server.execute([_k_request(90.0)])
    assert quiet.as_dict()["effective_k"][0, 0] == 90.0 and quiet.as_dict()["route"][0, 0] == b"refined"
    assert in_flight.value() == 0  # the execute's own rows are counted while it runs, then released

    in_flight.set(6)  # rows that other BLS instances are running right now (the shared gauge)
    busy, exact = policy_server.execute([_k_request(90.0), _k_request(90.0, exact=True)])
    out = busy.as_dict()
    assert out["effective_k"][0, 0] == 10.0  # the floor: tau at -80, every fake score clears it
    assert out["effective_tau"][0, 0] == pytest.approx(PERCENTILES[10])
    assert out["route"][0, 0] == b"student"
    ref = alone(PROMPTS[0], 0, {**{n: v for n, v in BASE.items() if n != "tau"}, "k": 10.0})
    np.testing.assert_array_equal(out["image"][0], ref.images[0])  # exactly the image at k = 10
    assert exact.as_dict()["effective_k"][0, 0] == 90.0 and exact.as_dict()["route"][0, 0] == b"refined"
    assert in_flight.value() == 6
    assert policy_server.pb.metric("adaptive_k_lowered_rows_total") == 1
    assert sorted(policy_server.pb.families["adaptive_effective_k"].metrics[0].observations) == [10.0, 90.0, 90.0]


def test_without_a_policy_the_bls_uses_the_requested_k_under_any_load(server):
    server.pb.families["adaptive_rows_in_flight"].metrics[0].set(100)
    (response,) = server.execute([_k_request(90.0)])
    assert response.as_dict()["effective_k"][0, 0] == 90.0
    assert server.execute([request([(PROMPTS[0], 0, BASE)])])[0].as_dict()["effective_k"][0, 0] == -1.0  # tau given: no k
