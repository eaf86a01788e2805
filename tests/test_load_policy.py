"""The load policy's decisions on simulated queues, with a simulated clock (no server, no sleeping).

Read as the specification of ``bll_python.load_policy``:
- under a load above ``high_load`` the effective k steps down toward the floor, one step per
  ``step_down_every_s``, and stops at the floor;
- between ``low_load`` and ``high_load`` it holds (hysteresis: no flapping around one threshold);
- at or below ``low_load`` it climbs back one step per ``step_up_after_s`` of calm, and a quiet
  period restores exactly the requested k (the teacher is never starved once the burst is over);
- it never raises k above the requested k, never lowers it below the floor (a request asking for
  less than the floor keeps its own k), and an exact request keeps its k whatever the load.
"""

from __future__ import annotations

import pytest

from bll_python.load_policy import GaugeState, LoadPolicy, LoadPolicySettings
from bll_python.settings import SettingsError

SETTINGS = LoadPolicySettings(floor_k=10.0, high_load=6, low_load=2, step=0.5, step_down_every_s=1.0, step_up_after_s=5.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def policy(clock) -> LoadPolicy:
    return LoadPolicy(SETTINGS, clock)


def test_a_quiet_server_uses_the_requested_k(policy, clock):
    for load in (0, 1, 2, 4, 6):  # up to high_load inclusive is not overload
        assert policy.decide(50.0, load) == 50.0
        clock.advance(0.3)


def test_overload_steps_k_down_once_per_interval_then_stays_at_the_floor(policy, clock):
    assert policy.decide(50.0, 7) == 30.0  # first step at once: halfway from 50 to the floor 10
    clock.advance(0.5)
    assert policy.decide(50.0, 9) == 30.0  # the step has not had time to act yet
    clock.advance(0.5)
    assert policy.decide(50.0, 9) == 10.0  # second step: the floor
    for _ in range(5):
        clock.advance(1.0)
        assert policy.decide(50.0, 20) == 10.0  # never below the floor


def test_the_step_applies_to_each_request_own_k(policy, clock):
    policy.decide(50.0, 7)
    assert policy.effective_k(90.0) == 50.0  # halfway from 90 to 10
    assert policy.effective_k(10.0) == 10.0
    assert policy.effective_k(4.0) == 4.0  # below the floor: the request's own k, never raised


def test_exact_requests_keep_their_k_under_any_load(policy, clock):
    for _ in range(4):
        assert policy.decide(50.0, 50, exact=True) == 50.0
        clock.advance(1.0)
    assert policy.level == SETTINGS.steps  # the load was still seen: other requests are lowered
    assert policy.effective_k(50.0) == 10.0


def test_the_hysteresis_band_holds_k(policy, clock):
    policy.decide(50.0, 7)
    for _ in range(20):  # long inside the band (2 < load <= 6): neither down nor up
        clock.advance(1.0)
        assert policy.decide(50.0, 4) == 30.0


def test_calm_restores_one_step_per_interval_and_then_the_requested_k(policy, clock):
    policy.decide(50.0, 7)
    clock.advance(1.0)
    policy.decide(50.0, 7)
    assert policy.effective_k(50.0) == 10.0
    clock.advance(4.75)
    assert policy.decide(50.0, 1) == 10.0  # not calm for long enough since the load was last high
    clock.advance(0.25)
    assert policy.decide(50.0, 1) == 30.0
    clock.advance(4.75)
    assert policy.decide(50.0, 0) == 30.0
    clock.advance(0.25)
    assert policy.decide(50.0, 0) == 50.0
    clock.advance(100.0)
    assert policy.decide(50.0, 0) == 50.0  # restored, and it stays there


def test_a_long_quiet_gap_restores_at_the_first_request_after_it(policy, clock):
    # A BLS instance sees the load only when it runs a request: after a quiet minute with no
    # requests at all, the first one must get the requested k, not a stale lowered one.
    policy.decide(50.0, 9)
    clock.advance(1.0)
    policy.decide(50.0, 9)
    clock.advance(60.0)
    assert policy.decide(50.0, 1) == 50.0


def test_load_in_the_band_postpones_the_restore(policy, clock):
    policy.decide(50.0, 7)
    clock.advance(4.0)
    policy.decide(50.0, 3)  # still above low_load: the calm period starts again after this
    clock.advance(4.0)
    assert policy.decide(50.0, 1) == 30.0
    clock.advance(1.0)
    assert policy.decide(50.0, 1) == 50.0


def test_an_oscillating_queue_does_not_make_k_oscillate(policy, clock):
    # The queue swings between just above high_load and the band every 0.5 s: k goes down and
    # stays down; it never climbs back while the load keeps returning.
    ks = []
    for i in range(40):
        ks.append(policy.decide(50.0, 7 if i % 2 == 0 else 3))
        clock.advance(0.5)
    assert ks[:2] == [30.0, 30.0]
    assert set(ks[2:]) == {10.0}


def test_a_burst_and_its_end_on_a_simulated_queue(clock):
    """A queue simulated second by second: capacity 2 rows/s at the requested k, 4 at the floor.

    A steady 1.5 rows/s, a burst at 3 rows/s for 60 s, then steady again. The static policy's
    queue grows through the burst; the load-aware one stops it and returns to the requested k
    (the teacher's full share) once the burst is over.
    """
    settings = LoadPolicySettings(floor_k=0.0, high_load=4, low_load=1, step=0.5, step_down_every_s=1.0, step_up_after_s=5.0)

    def run(policy: LoadPolicy | None) -> tuple[list[float], list[float]]:
        queue, queues, ks = 0.0, [], []
        for second in range(180):
            arrivals = 3.0 if 60 <= second < 120 else 1.5
            k = policy.decide(50.0, queue) if policy else 50.0
            capacity = 2.0 + 2.0 * (50.0 - k) / 50.0  # less teacher work, more images a second
            queue = max(0.0, queue + arrivals - capacity)
            queues.append(queue)
            ks.append(k)
            clock.advance(1.0)
        return queues, ks

    static, _ = run(None)
    aware, ks = run(LoadPolicy(settings, clock))
    assert static[119] >= 50 and aware[119] <= settings.high_load + 3.0  # grows vs bounded
    assert min(ks[60:120]) < 50.0 and ks[:60] == [50.0] * 60
    assert ks[-1] == 50.0  # restored after the burst


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(floor_k=-1.0), "load_policy.floor_k"),
        (dict(floor_k=101.0), "load_policy.floor_k"),
        (dict(low_load=6), "load_policy.low_load"),
        (dict(low_load=-1), "load_policy.low_load"),
        (dict(step=0.0), "load_policy.step"),
        (dict(step=1.5), "load_policy.step"),
        (dict(step_up_after_s=float("nan")), "load_policy.step_up_after_s"),
    ],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(SettingsError) as e:
        LoadPolicySettings(**{**SETTINGS.to_json(), **kwargs})
    assert e.value.field == field


class Gauge:
    """A shared gauge as pb_utils.Metric has it: ``value`` and ``set`` (a fresh one reads 0)."""

    def __init__(self) -> None:
        self.v = 0.0

    def value(self) -> float:
        return self.v

    def set(self, value: float) -> None:
        self.v = value


def test_instances_sharing_one_state_agree_and_an_idle_one_is_never_stale(clock):
    # Two BLS instances (processes) over the same three gauges. A ran the burst; B was idle through
    # it. Afterwards B, at a moderate load inside the band, must not hold a floor it never saw,
    # nor keep one that A has already restored: there is one level, whoever observes.
    gauges = dict(level=Gauge(), last_down=Gauge(), busy_or_up_at=Gauge())
    a = LoadPolicy(SETTINGS, clock, GaugeState(**gauges))
    assert a.decide(50.0, 9) == 30.0
    b = LoadPolicy(SETTINGS, clock, GaugeState(**gauges))  # an instance that starts later
    clock.advance(1.0)
    assert b.decide(50.0, 9) == 10.0  # B's observation continues A's episode: the second step
    assert a.effective_k(50.0) == 10.0
    clock.advance(10.0)
    assert a.decide(50.0, 1) == 50.0  # calm for two step_up_after_s: restored ...
    assert b.decide(50.0, 4) == 50.0  # ... for B as well, in the band
    assert gauges["level"].value() == 0


def test_a_fresh_gauge_state_reads_as_nothing_happened_yet():
    state = GaugeState(Gauge(), Gauge(), Gauge())
    assert (state.level, state.last_down, state.busy_or_up_at) == (0, None, None)
    state.last_down = 12.5
    assert state.last_down == 12.5
