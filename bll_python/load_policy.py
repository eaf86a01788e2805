"""The gate under load: the effective k falls toward a floor while the server is overloaded.

A fixed k sends a fixed share of images to the teacher however long the queue is. Under a burst
this policy accepts more student images for a while: each pipeline batch (with one request per BLS
execution: each request) gets an effective k between ``floor_k`` and the k it asked for.

The signal is the number of rows in flight, server-wide, counted where the server admits them (the
BLS increments a shared gauge when an execution starts and decrements it when it ends). By Little's
law a request's latency is rows in flight / throughput, so on a given machine a latency target is a
number of rows in flight: ``high_load`` is the most rows at which the deployment still meets its p99
target (``benchmarks.burst`` measures it). The count is instantaneous and leads the latency, where a
latency measured at completion lags it by one latency, which is too late to stop a queue growing.

Hysteresis, so that the policy neither oscillates nor starves the teacher:
- above ``high_load`` k steps down by ``step`` of the way to the floor, at most once per
  ``step_down_every_s`` (so that a step acts on the queue before the next is taken);
- between ``low_load`` and ``high_load`` k holds;
- at or below ``low_load`` k steps back up, one step per ``step_up_after_s`` since the load was last
  seen above ``low_load`` (or since the last step up), so a quiet period restores the requested k.

The clock is injected: the policy is a pure function of the observations and their times. Its
state is pluggable: the BLS instances are separate processes that each see the load only when they
run a request, so they share one state (``GaugeState``, three gauges in Triton's metric registry)
instead of each keeping a level that goes stale while it is idle. (Measured: with a state per
instance, instances that sat idle after a burst kept the floor for minutes at a moderate load.)
Two instances that observe at the same moment may both read the state before either writes it, so
a step can be taken twice or lost; the next observation corrects it, and the level stays in bounds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

from bll_python.settings import SettingsError, check_number

Clock = Callable[[], float]


@dataclass(frozen=True)
class LoadPolicySettings:
    """Deployment settings of the load-aware gate (``deployment.json``, key ``load_policy``)."""

    floor_k: float  # the lowest effective k under load
    high_load: float  # rows in flight above which k steps down (the latency target, in rows)
    low_load: float  # rows in flight at or below which k steps back up; < high_load
    step: float = 0.5  # fraction of (requested k - floor_k) per step, in (0, 1]
    step_down_every_s: float = 1.0
    step_up_after_s: float = 5.0

    def __post_init__(self) -> None:
        try:
            check_number("k", self.floor_k)
        except SettingsError as e:
            raise SettingsError("load_policy.floor_k", e.detail) from None
        for name in ("high_load", "low_load", "step", "step_down_every_s", "step_up_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise SettingsError(f"load_policy.{name}", f"got {value!r}; expected a finite number >= 0")
        if not 0 < self.step <= 1:
            raise SettingsError("load_policy.step", f"got {self.step!r}; allowed range (0, 1]")
        if not self.low_load < self.high_load:
            raise SettingsError("load_policy.low_load", f"got {self.low_load!r}; must be below high_load={self.high_load!r} (the hysteresis band)")

    @property
    def steps(self) -> int:
        """How many steps take k from the requested value to the floor."""
        return math.ceil(1 / self.step - 1e-9)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class PolicyState(Protocol):
    level: int  # steps taken toward the floor
    last_down: float | None  # when k last stepped down
    busy_or_up_at: float | None  # when the load was last seen above low_load, or k last stepped up


@dataclass
class LocalState:
    """The policy's state in this process (tests, in-process serving)."""

    level: int = 0
    last_down: float | None = None
    busy_or_up_at: float | None = None


class _Value(Protocol):
    def value(self) -> float: ...

    def set(self, value: float) -> None: ...


class GaugeState:
    """The policy's state in three shared gauges (pb_utils ``Metric`` objects: ``value``/``set``).

    Times are ``time.monotonic()`` readings, one clock for every process of the machine; NaN is None.
    """

    def __init__(self, level: _Value, last_down: _Value, busy_or_up_at: _Value) -> None:
        self._gauges = {"level": level, "last_down": last_down, "busy_or_up_at": busy_or_up_at}
        for name in ("last_down", "busy_or_up_at"):
            if self._gauges[name].value() == 0.0:  # a fresh gauge: nothing has happened yet
                self._gauges[name].set(math.nan)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._gauges:
            raise AttributeError(name)
        value = self._gauges[name].value()
        if name == "level":
            return int(value)
        return None if math.isnan(value) else value

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        self._gauges[name].set(math.nan if value is None else float(value))


class LoadPolicy:
    """Chooses the effective k of each batch from the rows in flight."""

    def __init__(self, settings: LoadPolicySettings, clock: Clock = time.monotonic, state: PolicyState | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.state: PolicyState = state if state is not None else LocalState()

    @property
    def level(self) -> int:
        """Steps taken toward the floor (0: the requested k)."""
        return self.state.level

    def observe(self, rows_in_flight: float) -> None:
        """Take one reading of the load at the clock's current time and adjust the level."""
        s, st, now = self.settings, self.state, self.clock()
        level, last_down, busy_or_up_at = st.level, st.last_down, st.busy_or_up_at
        if rows_in_flight > s.low_load:
            st.busy_or_up_at = busy_or_up_at = now
        if rows_in_flight > s.high_load:
            if level < s.steps and (last_down is None or now - last_down >= s.step_down_every_s):
                st.level = level + 1
                st.last_down = now
        elif rows_in_flight <= s.low_load and level > 0 and busy_or_up_at is not None:
            up = min(level, int((now - busy_or_up_at) / s.step_up_after_s))
            if up:
                st.level = level - up
                st.busy_or_up_at = busy_or_up_at + up * s.step_up_after_s

    def effective_k(self, requested_k: float, *, exact: bool = False) -> float:
        """The k for a batch that asked for ``requested_k``: never above it, never below the floor
        (a request below the floor keeps its own k), exactly ``requested_k`` when ``exact``."""
        floor, level = self.settings.floor_k, self.level
        if exact or requested_k <= floor or level == 0:
            return requested_k
        fraction = min(1.0, level * self.settings.step)
        return requested_k - fraction * (requested_k - floor)

    def decide(self, requested_k: float, rows_in_flight: float, *, exact: bool = False) -> float:
        """``observe`` the load, then the ``effective_k`` of this batch."""
        self.observe(rows_in_flight)
        return self.effective_k(requested_k, exact=exact)
