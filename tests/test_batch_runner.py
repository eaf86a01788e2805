"""``BatchRunner``: the rows of one execute's requests in, one result (or error) per request out.

The real pipeline over fake engines (tests/fakes.py), no server and no timing. The BLS-level
behaviour is specified in test_bls_execute.py; this file pins what only the runner decides: how
large a pipeline batch may be, and which requests a cancellation or a failure reaches.
"""

from __future__ import annotations

import numpy as np
import pytest

from bll_python.pipeline import Cancelled
from bll_python.serving import BatchRunner, RequestResult, Row
from bll_python.settings import GenerationSettings, SettingsError
from tests.fakes import MAX_ROWS, fake_deployment, fake_pipeline, write_fake_repository

PROMPTS = ["a red fox in the snow", "a koi pond", "two cats on a sofa", "an old lighthouse at dusk", "a bowl of ramen"]
REFINE = GenerationSettings(guidance_scale=7.5, student_steps=2, teacher_steps=2, sigma=0.7, strategy="refine", tau=1e6)
SIGMA = GenerationSettings(guidance_scale=7.5, student_steps=2, teacher_steps=2, sigma=0.3, strategy="refine", tau=1e6)
STUDENT = GenerationSettings(guidance_scale=7.5, student_steps=2, strategy="student_only")


class SpyPipeline:
    """The real pipeline, recording the rows of every call."""

    def __init__(self, pipeline) -> None:
        self.pipeline, self.batches = pipeline, []

    def __call__(self, prompts, seeds, settings=None, negative_prompts=None, **kwargs):
        self.batches.append(list(prompts))
        return self.pipeline(prompts, seeds, settings, negative_prompts, **kwargs)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    deployment = fake_deployment()
    return fake_pipeline(write_fake_repository(tmp_path_factory.mktemp("fake_runner"), deployment), deployment)


def _alone(pipeline, row: Row):
    return pipeline([row.prompt], [row.seed], row.settings, [row.negative_prompt])


def _assert_row(result: RequestResult, j: int, expected) -> None:
    np.testing.assert_array_equal(result.images[j], expected.images[0])
    assert result.scores[j, 0] == expected.scores[0] and result.routes[j, 0] == expected.routes[0].value.encode()
    assert result.unet_steps[j, 0] == expected.unet_steps[0]


def test_a_group_runs_in_pipeline_batches_of_at_most_max_rows_and_each_row_equals_itself_alone(pipeline):
    spy = SpyPipeline(pipeline)
    requests = [[Row(p, "", 20 + i, REFINE) for i, p in enumerate(PROMPTS[:3])], [Row(p, "", 30 + i, REFINE) for i, p in enumerate(PROMPTS[3:])]]
    results = BatchRunner(spy, max_rows=MAX_ROWS).run(requests)
    assert max(len(b) for b in spy.batches) <= MAX_ROWS
    assert sorted(p for b in spy.batches for p in b) == sorted(r.prompt for rows in requests for r in rows), "every row ran exactly once"
    for rows, result in zip(requests, results):
        for j, row in enumerate(rows):
            _assert_row(result, j, _alone(pipeline, row))


def test_rows_with_different_sigma_in_one_request_are_not_run_with_each_others_sigma(pipeline):
    rows = [Row(PROMPTS[0], "", 1, REFINE), Row(PROMPTS[1], "", 2, SIGMA), Row(PROMPTS[2], "", 3, REFINE)]
    (result,) = BatchRunner(pipeline, max_rows=8).run([rows])
    for j, row in enumerate(rows):
        _assert_row(result, j, _alone(pipeline, row))


def test_a_parse_error_and_a_failing_group_fail_alone(pipeline):
    teacher = pipeline.engines.unet_teacher
    teacher.fail = "down"
    try:
        bad = SettingsError("sigma", "got 2; allowed range [0.001, 1]")
        # Three one-row requests reach the failing teacher: more than MAX_ROWS, so several batches.
        refine = [[Row(p, "", i, REFINE)] for i, p in enumerate(PROMPTS[:3])]
        requests = [bad, *refine, [Row(PROMPTS[3], "", 3, STUDENT)]]
        results = BatchRunner(pipeline, max_rows=MAX_ROWS).run(requests)
    finally:
        teacher.fail = None
    assert results[0] is bad
    for result in results[1:4]:
        assert isinstance(result, Exception) and "unet_teacher: down" in str(result)
    _assert_row(results[4], 0, _alone(pipeline, requests[4][0]))


def test_cancellation_stops_a_batch_only_when_every_request_in_it_was_cancelled(pipeline):
    student = pipeline.engines.unet_student
    calls_before = len(student.calls)
    cancelled = {0}  # request 0 alone in its group; request 1 shares a group with request 2
    requests = [[Row(PROMPTS[0], "", 0, STUDENT)], [Row(PROMPTS[1], "", 1, SIGMA)], [Row(PROMPTS[2], "", 2, SIGMA)]]
    results = BatchRunner(pipeline, max_rows=8).run(requests, cancelled=lambda i: i in cancelled or i == 1)
    student_calls = len(student.calls) - calls_before
    assert isinstance(results[0], Cancelled)
    # Request 2 was not cancelled, so the batch it shares with the cancelled request 1 runs to the end.
    _assert_row(results[2], 0, _alone(pipeline, requests[2][0]))
    assert not isinstance(results[1], Exception) or isinstance(results[1], Cancelled)
    # Request 0's batch stopped before its first student step.
    assert student_calls == SIGMA.student_steps
