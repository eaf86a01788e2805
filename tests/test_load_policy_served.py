"""The load policy in a live server: a burst lowers the teacher share, a quiet period restores it.

The repository is the tiny one with a policy that reacts at once (one step to the floor, k = 0, as
soon as more than 2 rows are in flight; back up after 1 s of at most 1 row in flight). Requests ask
for k = 100 (tau at the highest calibration score, so nearly every row goes to the teacher) on the
calibration prompts, so the teacher share of a response tells which k it got. Nothing waits on a
timer: the test sends requests until the server's answers (``effective_k``) or its metrics
(``adaptive_rows_in_flight``) show the state it waits for, within a deadline.
"""

from __future__ import annotations

import math
import shutil
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from bll_python.deployment import Deployment
from bll_python.layout import assets_dir
from bll_python.load_policy import LoadPolicySettings
from clients.client import AdaptiveClient, Generation
from export.load_policy import set_load_policy

pytestmark = pytest.mark.server

REQUESTED_K = 100.0
POLICY = LoadPolicySettings(floor_k=0.0, high_load=2, low_load=1, step=1.0, step_down_every_s=0.0, step_up_after_s=1.0)
# The student runs the serving defaults, as calibration did, so k = 100 puts tau at the top score.
SETTINGS = dict(strategy="refine", k=REQUESTED_K, teacher_steps=2)
BURST = 8  # concurrent single-row requests: more than high_load rows in flight once they overlap
DEADLINE_S = 180.0


def _generate(url: str, prompt: str, seed: int, **settings) -> Generation:
    with AdaptiveClient(url, "grpc") as client:
        return client.generate([prompt], [seed], **{**SETTINGS, **settings})[0]


def _scrape(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("adaptive_"))}


def _teacher_share(gens: list[Generation]) -> float:
    return sum(g.route != "student" for g in gens) / len(gens)


def _assert_gate_agrees(g: Generation, deployment: Deployment) -> None:
    """The response's tau is the calibration's tau at its k, and its route is the gate's verdict."""
    assert g.effective_tau == pytest.approx(deployment.calibration.tau(g.effective_k), abs=1e-5)
    assert (g.route == "student") == (g.score >= g.effective_tau), (g.route, g.score, g.effective_tau)


def _burst(url: str, prompts: list[str], **settings) -> list[Generation]:
    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(lambda ip: _generate(url, ip[1], ip[0], **settings), enumerate(prompts)))


@pytest.fixture(scope="module")
def policy_server(tiny_repository, tmp_path_factory):
    from tests.triton_fixtures import running_server

    repo = tmp_path_factory.mktemp("load_policy") / "repository"
    shutil.copytree(tiny_repository, repo)  # the session fixture stays as it is
    set_load_policy(repo, POLICY)
    with running_server(repo) as server:
        yield server, Deployment.load(assets_dir(repo))


def _until(predicate, what: str):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
    pytest.fail(f"gave up after {DEADLINE_S:.0f} s waiting for {what}")


def test_a_burst_lowers_the_teacher_share_and_a_quiet_period_restores_it(policy_server, calibration_prompts):
    server, deployment = policy_server
    url = server.grpc_url
    prompts = calibration_prompts[:BURST]

    # 1. Quiet: one request at a time, so one row in flight: every row gets the requested k.
    quiet = [_generate(url, p, i) for i, p in enumerate(prompts)]
    assert [g.effective_k for g in quiet] == [REQUESTED_K] * len(prompts)
    for g in quiet:
        _assert_gate_agrees(g, deployment)
    quiet_share = _teacher_share(quiet)
    assert quiet_share >= 0.75  # k = 100: all but the top-scoring calibration rows are refined

    # 2. A burst: once the requests overlap, those that start with more than 2 rows in flight get
    # the floor, their tau falls to the lowest calibration score and the student keeps them. Two
    # requests of the burst opt out and keep k = 100 whatever the load.
    before = _scrape(server.metrics_url)

    def burst_with_opt_outs():
        with ThreadPoolExecutor(BURST) as pool:
            futures = [pool.submit(_generate, url, p, i, **({"exact_k": True} if i >= BURST - 2 else {})) for i, p in enumerate(prompts)]
            gens = [f.result() for f in futures]
        return gens if any(g.effective_k < REQUESTED_K for g in gens[: BURST - 2]) else None

    burst = _until(burst_with_opt_outs, "a burst whose requests overlap")
    adaptive, exact = burst[: BURST - 2], burst[BURST - 2 :]
    assert {g.effective_k for g in adaptive} <= {REQUESTED_K, POLICY.floor_k}
    assert [g.effective_k for g in exact] == [REQUESTED_K, REQUESTED_K]
    for g in burst:
        _assert_gate_agrees(g, deployment)
    lowered = [g for g in adaptive if g.effective_k == POLICY.floor_k]
    assert _teacher_share(lowered) < quiet_share
    assert _teacher_share(adaptive) < _teacher_share(quiet[: BURST - 2])
    # The exact requests' answers are those of the quiet phase (same prompt, seed and k).
    for g, q in zip(exact, quiet[BURST - 2 :]):
        assert (g.route, g.score) == (q.route, q.score)

    # The metrics say the same: rows whose k was lowered, and k's distribution.
    after = _scrape(server.metrics_url)
    assert after["adaptive_k_lowered_rows_total"] - before.get("adaptive_k_lowered_rows_total", 0.0) >= len(lowered)
    assert after["adaptive_effective_k_count"] > before.get("adaptive_effective_k_count", 0.0)

    # 3. Quiet again: once nothing is in flight, each prompt is asked until its answer has the
    # requested k (an instance steps back up after 1 s of calm); then it equals the quiet answer.
    _until(lambda: _scrape(server.metrics_url)["adaptive_rows_in_flight"] == 0, "the burst to drain")
    def with_requested_k(i: int) -> Generation | None:
        g = _generate(url, prompts[i], i)
        return g if g.effective_k == REQUESTED_K else None

    restored = [_until(lambda: with_requested_k(i), f"k = {REQUESTED_K:g} for prompt {i}") for i in range(len(prompts))]
    assert [(g.route, g.score) for g in restored] == [(q.route, q.score) for q in quiet]
    assert _teacher_share(restored) == quiet_share


def test_without_a_policy_k_is_exact_under_any_load(tiny_server, calibration_prompts, deployment):
    gens = _burst(tiny_server.grpc_url, calibration_prompts[:BURST])
    assert [g.effective_k for g in gens] == [REQUESTED_K] * BURST
    for g in gens:
        _assert_gate_agrees(g, deployment)


def test_tau_requests_report_no_k_and_non_gated_strategies_no_tau(tiny_server, deployment):
    g = _generate(tiny_server.grpc_url, "a koi pond", 1, k=None, tau=0.5)
    assert g.effective_k == -1.0 and g.effective_tau == pytest.approx(0.5)
    g = _generate(tiny_server.grpc_url, "a koi pond", 1, k=None, strategy="student_only")
    assert g.effective_k == -1.0 and g.effective_tau == 0.0


def test_the_burst_benchmark_records_every_served_image(policy_server, tiny_repository, calibration_prompts, tmp_path):
    """``benchmarks.burst`` in miniature on this server: a few seconds of open-loop load, each
    request's route and k recorded, its image re-scored, the windows and the plot written."""
    from benchmarks.burst import Phases, phase_summary, plot, score_served, windows
    from benchmarks.burst import open_loop

    server, deployment = policy_server
    phases = Phases(steady_s=1.0, burst_s=1.0, after_s=1.0, steady_rate=2.0, burst_rate=6.0)
    arrivals = phases.arrivals(seed=3)
    served, inflight = open_loop(server.grpc_url, calibration_prompts, phases, arrivals, {"strategy": "refine", "k": 50.0}, server.metrics_url)
    assert len(served) == len(arrivals) and not [r.error for r in served if r.error]
    for r in served:
        assert r.route in ("student", "refined") and r.image is not None and r.latency_s > 0
        assert r.effective_k in (50.0, POLICY.floor_k)
    score_served(tiny_repository, calibration_prompts, served)
    for r in served:
        if r.route == "student":  # the served image is the gate's own: it scores what the gate saw
            assert r.final_reward == pytest.approx(r.score, abs=0.05)
        assert math.isfinite(r.final_reward) and math.isnan(r.fidelity)  # tiny has no judge
    wins = windows(served, 1.0, phases.seconds)
    assert sum(w["requests"] for w in wins) == len(served)
    assert phase_summary(served, "burst")["requests"] == sum(r.phase == "burst" for r in served)
    assert plot({"load_aware": (wins, inflight)}, phases, tmp_path / "burst.png", "smoke").stat().st_size > 0
