"""k -> tau: the k-th percentile of the student's scores on the calibration prompts.

The expectations are percentiles recomputed here, by hand, from scores recomputed here: not by
the calibration code under test. Several k on both sides of 50, so a mirrored mapping fails.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from bll_python.deployment import Calibration
from bll_python.settings import GenerationSettings, SettingsError
from tests.fakes import fake_deployment

KS = [0.0, 10.0, 25.0, 37.5, 75.0, 90.0, 100.0]


def percentile(values: list[float], k: float) -> float:
    """The k-th percentile with linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    h = (len(xs) - 1) * k / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


# A stored calibration whose percentiles are easy to state: p[k] = k^2 / 10.
SQUARES = [k * k / 10 for k in range(101)]


@pytest.mark.parametrize("k, tau", [(0, 0.0), (10, 10.0), (25, 62.5), (37.5, (136.9 + 144.4) / 2), (75, 562.5), (90, 810.0), (100, 1000.0)])
def test_a_stored_calibration_maps_k_to_its_kth_percentile_interpolating_between_integers(k, tau):
    deployment = fake_deployment(SQUARES)
    assert deployment.calibration.tau(k) == pytest.approx(tau)
    assert deployment.resolve_tau(GenerationSettings(k=k)) == pytest.approx(tau)


def test_tau_wins_over_the_default_k_and_k_needs_a_calibration():
    deployment = replace(fake_deployment(SQUARES), default_k=30.0)
    assert deployment.resolve_tau(GenerationSettings(tau=-3.0)) == -3.0
    assert deployment.resolve_tau(GenerationSettings()) == pytest.approx(90.0)  # neither: the default k
    bare = fake_deployment(None)
    with pytest.raises(SettingsError, match="^k: .*no calibration"):
        bare.resolve_tau(GenerationSettings(k=25.0))
    with pytest.raises(SettingsError, match="^k: .*allowed range"):
        Calibration(SQUARES, 1, {}).tau(100.5)


@pytest.mark.parametrize("k", KS)
def test_k_maps_to_the_kth_percentile_of_the_recomputed_calibration_scores(deployment, calibration_scores, k):
    expected = percentile(calibration_scores, k)
    got = deployment.resolve_tau(GenerationSettings(k=k))
    assert got == pytest.approx(expected, abs=1e-5), f"k={k}: tau {got} but the recomputed percentile is {expected}"
    share = sum(s < got for s in calibration_scores) / len(calibration_scores)
    assert abs(share - k / 100) <= 1 / len(calibration_scores) + 1e-9, f"k={k}: {share:.0%} of the calibration rows fall below tau"
