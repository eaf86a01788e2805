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

The clock is injected: the policy is a pure function of the observations and their times.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

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


class LoadPolicy:
    """Chooses the effective k of each batch from the rows in flight; one per BLS instance."""

    def __init__(self, settings: LoadPolicySettings, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.level = 0  # steps taken toward the floor
        self._last_down: float | None = None
        self._busy_or_up_at: float | None = None  # when the load was last seen above low_load, or k last stepped up

    def observe(self, rows_in_flight: float) -> None:
        """Take one reading of the load at the clock's current time and adjust the level."""
        s, now = self.settings, self.clock()
        if rows_in_flight > s.low_load:
            self._busy_or_up_at = now
        if rows_in_flight > s.high_load:
            if self.level < s.steps and (self._last_down is None or now - self._last_down >= s.step_down_every_s):
                self.level += 1
                self._last_down = now
        elif rows_in_flight <= s.low_load and self.level > 0 and self._busy_or_up_at is not None:
            up = min(self.level, int((now - self._busy_or_up_at) / s.step_up_after_s))
            if up:
                self.level -= up
                self._busy_or_up_at += up * s.step_up_after_s

    def effective_k(self, requested_k: float, *, exact: bool = False) -> float:
        """The k for a batch that asked for ``requested_k``: never above it, never below the floor
        (a request below the floor keeps its own k), exactly ``requested_k`` when ``exact``."""
        floor = self.settings.floor_k
        if exact or requested_k <= floor or self.level == 0:
            return requested_k
        fraction = min(1.0, self.level * self.settings.step)
        return requested_k - fraction * (requested_k - floor)

    def decide(self, requested_k: float, rows_in_flight: float, *, exact: bool = False) -> float:
        """``observe`` the load, then the ``effective_k`` of this batch."""
        self.observe(rows_in_flight)
        return self.effective_k(requested_k, exact=exact)
