"""Work caps (issue 16): every request's cost is bounded, and the contract's ranges are honest.

- a request's work is bounded by its rows (Triton's ``max_batch_size``), its steps and the length
  of its refine schedule, which may not exceed the teacher's 1000 training timesteps;
- every sigma the contract allows runs (no range that answers "internal error");
- any int64 seed is accepted, as the contract says;
- a prompt with no visible character is blank, however many invisible characters it holds.
"""

from __future__ import annotations

import numpy as np
import pytest

from bll_python.serving import parse_request
from bll_python.settings import (
    INT64_MAX,
    INT64_MIN,
    LIMITS,
    MAX_SCHEDULE_STEPS,
    GenerationSettings,
    SettingsError,
    is_blank,
    min_refine_sigma,
    refine_schedule_length,
)


def _col(values, dtype=None):
    return np.array([[v] for v in values], dtype=dtype or np.object_)


def test_the_sigma_floor_is_the_smallest_fp32_value_whose_refine_schedule_fits_the_teachers_timesteps():
    steps = LIMITS["teacher_steps"]
    for teacher_steps in range(int(steps.low), int(steps.high) + 1):
        floor = min_refine_sigma(teacher_steps)
        assert floor == float(np.float32(floor)) and abs(floor - teacher_steps / MAX_SCHEDULE_STEPS) < 1e-6
        n = refine_schedule_length(teacher_steps, floor)
        assert n <= MAX_SCHEDULE_STEPS and int(n * floor) == teacher_steps, (teacher_steps, floor, n)
        assert GenerationSettings(teacher_steps=teacher_steps, sigma=floor, strategy="refine").sigma == floor
        below = float(np.nextafter(np.float32(floor), np.float32(0)))
        assert refine_schedule_length(teacher_steps, below) > MAX_SCHEDULE_STEPS
        with pytest.raises(SettingsError):
            GenerationSettings(teacher_steps=teacher_steps, sigma=below, strategy="refine")


@pytest.mark.parametrize("sigma, teacher_steps", [(1e-6, 100), (1e-30, 1), (0.05, 100), (0.0999, 100)])
def test_a_sigma_whose_refine_schedule_would_exceed_the_cap_is_refused_naming_the_floor(sigma, teacher_steps):
    with pytest.raises(SettingsError) as err:
        GenerationSettings(teacher_steps=teacher_steps, sigma=sigma, strategy="refine")
    assert err.value.field == "sigma"
    message = str(err.value)
    assert message.startswith("sigma: got ") and ("[0.001, 1]" in message or f"teacher_steps / {MAX_SCHEDULE_STEPS}" in message), message


def test_the_floor_is_exact_at_100_teacher_steps():
    assert GenerationSettings(teacher_steps=100, sigma=0.1, strategy="refine").sigma == 0.1
    with pytest.raises(SettingsError, match=r"teacher_steps=100: the refine schedule would exceed 1000 steps; allowed sigma >= teacher_steps / 1000 \(here 0.100000001 as FP32\)"):
        GenerationSettings(teacher_steps=100, sigma=0.09, strategy="refine")


@pytest.mark.parametrize("strategy", ["regenerate", "student_only", "teacher_only"])
def test_strategies_that_never_refine_do_not_check_the_refine_schedule(strategy):
    assert GenerationSettings(teacher_steps=100, sigma=0.01, strategy=strategy).sigma == 0.01


def test_the_whole_sigma_range_of_the_contract_is_reachable():
    assert GenerationSettings(teacher_steps=1, sigma=LIMITS["sigma"].low, strategy="refine")
    assert GenerationSettings(teacher_steps=100, sigma=LIMITS["sigma"].high, strategy="refine")


@pytest.mark.parametrize("seed", [INT64_MIN, -1, 0, 2**53 + 1, 2**62 + 12345, INT64_MAX])
def test_any_int64_seed_is_accepted_exactly(seed):
    rows = parse_request({"prompt": _col([b"a cat"]), "seed": np.array([[seed]], dtype=np.int64)}, GenerationSettings())
    assert rows[0].seed == seed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \t\n",
        "\u200b",  # zero-width space (Cf)
        "\u200b\u200c\u200d\u2060\ufeff",  # zero-width non-joiner, joiner, word joiner, BOM
        "\u200e\u200f\u202a\u202e",  # bidi marks and overrides
        "\u3164\u115f\u1160\uffa0",  # Hangul fillers (letters that print nothing)
        "\u2800\u2800",  # Braille blank
        "\u00a0\u2003\u3000",  # no-break, em and ideographic spaces
        "\ufe0f\U000e0100",  # variation selectors
        "\x00\x1b",  # controls
    ],
)
def test_a_prompt_of_only_invisible_characters_is_blank(text):
    assert is_blank(text)
    with pytest.raises(SettingsError) as err:
        parse_request({"prompt": _col([text.encode()])}, GenerationSettings())
    assert err.value.field == "prompt" and "no visible character" in str(err.value)


@pytest.mark.parametrize("text", ["a cat", "\u200bcat", "\U0001f469\u200d\U0001f680", "\u732b", "e\u0301", "."])
def test_a_prompt_with_any_visible_character_is_not_blank(text):
    assert not is_blank(text)
    assert parse_request({"prompt": _col([text.encode()])}, GenerationSettings())[0].prompt == text


def test_the_admission_queue_holds_what_the_machine_finishes_in_the_wait_budget_and_one_per_instance():
    from export.triton.placement import ADMISSION_WAIT_S, admission_queue_size

    assert admission_queue_size(8, 0.1) == int(ADMISSION_WAIT_S / 0.1)
    assert admission_queue_size(8, 5.0) == 8, "never fewer than one waiting request per instance"
    assert admission_queue_size(3, None) == 3, "uncalibrated: one per instance"
    with pytest.raises(ValueError):
        admission_queue_size(0, 1.0)


def test_the_expected_image_time_follows_the_budget_rule(deployment):
    from dataclasses import replace

    from bll_python.deployment import Calibration

    d = replace(deployment, calibration=Calibration([0.0] * 101, 1, {}, student_seconds_per_image=0.2), default_k=50.0)
    s = d.defaults
    assert d.expected_image_seconds() == pytest.approx(0.2 * (s.student_steps + 0.5 * s.teacher_steps) / s.student_steps)
    assert replace(d, calibration=None).expected_image_seconds() is None
