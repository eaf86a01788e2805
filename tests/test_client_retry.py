"""AdaptiveClient retries what a restarting or overloaded server answers, and nothing else."""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from clients.retry import RetryPolicy, is_retryable


def _err(status: str, message: str) -> InferenceServerException:
    return InferenceServerException(msg=message, status=status)


RETRYABLE = [
    _err("StatusCode.UNAVAILABLE", "Exceeds maximum queue size"),
    _err("503", "no server free: retry with backoff"),
    _err("StatusCode.NOT_FOUND", "Request for unknown model: 'adaptive_diffusion' has no available versions"),
    _err("StatusCode.INTERNAL", "Stub process 'adaptive_diffusion_0_3' is not healthy."),
    _err("500", "Stub process 'adaptive_diffusion_0_3' is not healthy."),
    ConnectionRefusedError(111, "Connection refused"),
]
FINAL = [
    _err("StatusCode.INVALID_ARGUMENT", "sigma: got 2; allowed range [0.001, 1]"),
    _err("400", "prompt: got '', which is blank (no visible character)"),
    _err("StatusCode.NOT_FOUND", "Request for unknown model: 'adaptive_diffusoin' is not found"),
    _err("StatusCode.INTERNAL", "component unet_teacher: RuntimeError: boom"),
    _err("StatusCode.CANCELLED", "cancelled by the client"),
    _err("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded"),
    ValueError("not a server error"),
]


@pytest.mark.parametrize("exc", RETRYABLE, ids=lambda e: str(e)[:40])
def test_what_a_restarting_or_overloaded_server_answers_is_retryable(exc):
    assert is_retryable(exc)


@pytest.mark.parametrize("exc", FINAL, ids=lambda e: str(e)[:40])
def test_what_the_request_itself_caused_is_not(exc):
    assert not is_retryable(exc)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_a_retryable_failure_is_retried_with_growing_backoff_until_it_succeeds():
    clock, answers = _Clock(), [RETRYABLE[0], RETRYABLE[2], RETRYABLE[0], "image"]

    def attempt(_left: float) -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert RetryPolicy(deadline_s=30, first_s=0.1, max_s=2).call(attempt, clock=clock, sleep=clock.sleep) == "image"
    assert len(clock.sleeps) == 3
    # jittered to 50-100 % of 0.1, 0.2, 0.4 s
    for pause, nominal in zip(clock.sleeps, (0.1, 0.2, 0.4)):
        assert nominal / 2 <= pause <= nominal


def test_a_bad_request_fails_at_once():
    clock, calls = _Clock(), []

    def attempt(_left: float) -> None:
        calls.append(1)
        raise FINAL[0]

    with pytest.raises(InferenceServerException, match="sigma"):
        RetryPolicy().call(attempt, clock=clock, sleep=clock.sleep)
    assert calls == [1] and clock.sleeps == []


def test_retries_stop_at_the_deadline_with_the_last_error():
    clock = _Clock()

    def attempt(_left: float) -> None:
        raise RETRYABLE[0]

    with pytest.raises(InferenceServerException, match="queue size"):
        RetryPolicy(deadline_s=5, first_s=0.1, max_s=1).call(attempt, clock=clock, sleep=clock.sleep)
    assert clock.now <= 5.0 + 1e-9 and sum(clock.sleeps) == pytest.approx(clock.now)
    assert max(clock.sleeps) <= 1.0


def test_no_retries_when_the_deadline_is_zero():
    def attempt(_left: float) -> None:
        raise RETRYABLE[0]

    with pytest.raises(InferenceServerException):
        RetryPolicy(deadline_s=0).call(attempt)
