"""Which failures a client retries, and how: exponential backoff with jitter, within a deadline.

Retried: what a restarting or overloaded server answers, and nothing a request itself caused.
- UNAVAILABLE (gRPC) / 503 (HTTP): the admission queue is full, a component is unavailable, or the
  gateway has no server up;
- NOT_FOUND of a model that is unloading or loading ("has no available versions", "is not ready"),
  which gRPC clients see for a few seconds while the launcher restarts tritonserver;
- INTERNAL "Stub process '...' is not healthy.": Triton 2.51's answer from a dead BLS stub, which
  the launcher restarts (export/SECURITY.md);
- a refused or reset connection (the server is between processes).
INVALID_ARG, CANCELLED, deadline and every other error are returned at once.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

_RELOADING = ("has no available versions", "is not ready")


def is_retryable(exc: BaseException) -> bool:
    """True for the failures of a restarting or overloaded server (the list above)."""
    if isinstance(exc, (ConnectionRefusedError, ConnectionResetError, BrokenPipeError)):
        return True
    status = getattr(exc, "status", None)
    if not callable(status):
        return False
    code = str(status() or "")
    message = str(exc.message() if callable(getattr(exc, "message", None)) else exc)
    if code in ("StatusCode.UNAVAILABLE", "503"):
        return True
    if code in ("StatusCode.NOT_FOUND", "400", "404") and any(m in message for m in _RELOADING):
        return True
    if code in ("StatusCode.INTERNAL", "500") and "Stub process" in message and "is not healthy" in message:
        return True
    # tritonclient.http reports a refused connection with no status and the socket error as text.
    return code in ("", "None") and "Connection refused" in message


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff ``first_s``, doubling up to ``max_s``, each wait jittered to 50-100 %, until ``deadline_s``
    after the first attempt (0: no retries)."""

    deadline_s: float = 30.0
    first_s: float = 0.1
    max_s: float = 2.0

    def call(self, attempt: Callable[[float], T], *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> T:
        """``attempt(remaining_s)`` until it succeeds, fails for good, or the deadline passes (then its last error)."""
        start = clock()
        wait = self.first_s
        while True:
            try:
                return attempt(max(self.deadline_s - (clock() - start), 0.0))
            except Exception as exc:
                remaining = self.deadline_s - (clock() - start)
                if not is_retryable(exc) or remaining <= 0:
                    raise
                pause = min(wait * random.uniform(0.5, 1.0), remaining)
                sleep(pause)
                wait = min(wait * 2, self.max_s)
