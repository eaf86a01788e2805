"""The burst benchmark's schedule and summaries (``benchmarks/burst.py``), without a server."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.burst import Phases, Served, phase_summary, windows


def test_the_schedule_steps_the_rate_up_for_the_burst_and_back():
    phases = Phases(steady_s=100, burst_s=100, after_s=100, steady_rate=2.0, burst_rate=6.0)
    t = phases.arrivals(seed=1)
    counts = [np.sum((t >= a) & (t < a + 100)) for a in (0, 100, 200)]
    # Poisson counts: mean 200, 600, 200 (sd about 14, 24, 14).
    assert 150 < counts[0] < 250 and 500 < counts[1] < 700 and 150 < counts[2] < 250
    assert np.all(np.diff(t) > 0) and t[-1] < phases.seconds
    assert np.array_equal(t, phases.arrivals(seed=1))  # both policies get the same arrivals
    assert [phases.phase(x) for x in (0.0, 99.9, 100.0, 199.9, 200.0)] == ["steady", "steady", "burst", "burst", "after"]


def _served(sent: float, latency: float, route: str, k: float, phase: str = "steady") -> Served:
    return Served(0, 0, 0, phase, sent, latency_s=latency, route=route, effective_k=k)


def test_windows_group_requests_by_send_time():
    rows = [_served(0.5, 1.0, "student", 50), _served(1.5, 3.0, "refined", 50), _served(6.0, 10.0, "student", 0)]
    w = windows(rows, width_s=5.0, until_s=10.0)
    assert [x["requests"] for x in w] == [2, 1]
    assert w[0]["p50_ms"] == pytest.approx(2000.0) and w[0]["teacher_share"] == 0.5 and w[0]["mean_k"] == 50
    assert w[1]["p99_ms"] == pytest.approx(10000.0) and w[1]["teacher_share"] == 0.0 and w[1]["mean_k"] == 0


def test_phase_summary_leaves_out_failed_requests_and_missing_judgements():
    rows = [_served(0, 1.0, "refined", 50, "burst"), _served(1, 2.0, "student", 25, "burst"), Served(2, 0, 0, "burst", 2.0, error="boom")]
    rows[0].final_reward, rows[1].final_reward = 1.0, 0.0
    s = phase_summary(rows, "burst")
    assert s["requests"] == 2 and s["teacher_share"] == 0.5 and s["mean_k"] == 37.5
    assert s["mean_final_image_reward"] == 0.5 and s["mean_fidelity"] is None
    rows[0].fidelity = 0.8
    assert phase_summary(rows, "burst")["mean_fidelity"] == 0.8
