"""Continuous batching in-process: many pipeline programs share component calls, and no row notices.

``StepBatcher`` runs the pipeline programs of many requests at once and merges their pending calls
per component. Every row keeps its own scheduler state and generator inside its program, and ONNX
Runtime computes the rows of a call independently, so a row's image is bit-identical to the same
row generated alone, whatever it shared its calls with and whenever it joined.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from bll_python.engines import ComponentError
from bll_python.pipeline import Cancelled
from bll_python.settings import GenerationSettings
from bll_python.step_batcher import StepBatcher, threaded
from tests.mixed_requests import CASES


def _settings(pipe, fields) -> GenerationSettings:
    return GenerationSettings.from_mapping(fields, pipe.deployment.defaults)


def _teacher_steps(pipe, result, fields) -> int:
    s = _settings(pipe, fields)
    steps = int(result.unet_steps[0])
    return steps if s.strategy.value == "teacher_only" else steps - (s.student_steps if result.teacher_rows else steps)


def _batcher(pipe, lanes: int = 2, engines=None) -> StepBatcher:
    engines = engines or dict(pipe.engines.items())
    specs = pipe.deployment.specs()
    return StepBatcher(threaded(engines, {n: lanes for n in engines}), {n: s.max_batch for n, s in specs.items()}, {n: lanes for n in engines})


async def _run_all(batcher: StepBatcher, programs) -> list:
    try:
        return await asyncio.gather(*(batcher.run(p) for p in programs), return_exceptions=True)
    finally:
        await batcher.close()


@pytest.fixture(scope="module")
def alone(ort_pipeline):
    return [ort_pipeline([p], [seed], _settings(ort_pipeline, f)) for p, seed, f in CASES]


def test_rows_of_every_strategy_sharing_calls_are_bit_identical_to_each_row_alone(ort_pipeline, alone):
    # One lane per component: whatever waits while a call runs goes into the next call together, so
    # programs in the same phase merge for certain (with several lanes they may as well split).
    batcher = _batcher(ort_pipeline, lanes=1)
    programs = [ort_pipeline.program([p], [seed], _settings(ort_pipeline, f)) for p, seed, f in CASES]
    merged = asyncio.run(_run_all(batcher, programs))
    for (prompt, _, fields), a, m in zip(CASES, alone, merged):
        assert not isinstance(m, BaseException), m
        assert m.routes == a.routes, prompt
        assert torch.equal(m.latents, a.latents), f"{prompt} ({fields['strategy']}): latent differs from the row alone"
        assert np.array_equal(m.images, a.images)
        assert m.scores[0] == a.scores[0]
    # The point of it: calls of different programs were merged, for both UNets.
    for component in ("unet_student", "unet_teacher"):
        assert max(batcher.stats[component].programs_per_call) >= 2, f"{component} never merged two programs"


def test_a_request_joining_while_others_run_gets_the_image_it_gets_alone(ort_pipeline, alone):
    batcher = _batcher(ort_pipeline)

    async def staggered():
        first = [asyncio.ensure_future(batcher.run(ort_pipeline.program([p], [s], _settings(ort_pipeline, f)))) for p, s, f in CASES[:4]]
        # Join once the first requests are well into their denoising loops.
        while batcher.stats["unet_student"].calls < 3:
            await asyncio.sleep(0)
        late = [asyncio.ensure_future(batcher.run(ort_pipeline.program([p], [s], _settings(ort_pipeline, f)))) for p, s, f in CASES[4:]]
        try:
            return await asyncio.gather(*first, *late)
        finally:
            await batcher.close()

    for a, m in zip(alone, asyncio.run(staggered())):
        assert torch.equal(m.latents, a.latents) and np.array_equal(m.images, a.images)


def test_lanes_split_waiting_rows_so_every_lane_gets_work(ort_pipeline):
    batcher = _batcher(ort_pipeline, lanes=2)
    s = _settings(ort_pipeline, dict(strategy="student_only", student_steps=4))
    programs = [ort_pipeline.program([f"prompt {i}"], [i], s) for i in range(6)]
    asyncio.run(_run_all(batcher, programs))
    stats = batcher.stats["unet_student"]
    assert stats.rows == 6 * 4 * 2  # six rows, four steps, CFG doubles each row
    # Six programs over two lanes: no call took everyone (the fair share is half the waiting rows).
    assert max(stats.programs_per_call) < 6


def test_a_failing_component_call_fails_only_the_programs_in_it(ort_pipeline, alone):
    engines = dict(ort_pipeline.engines.items())
    teacher = engines["unet_teacher"]

    def broken_teacher(inputs):
        raise ComponentError("unet_teacher", "injected fault")

    engines["unet_teacher"] = broken_teacher
    batcher = _batcher(ort_pipeline, engines=engines)
    programs = [ort_pipeline.program([p], [s], _settings(ort_pipeline, f)) for p, s, f in CASES]
    results = asyncio.run(_run_all(batcher, programs))
    for (prompt, _, fields), a, r in zip(CASES, alone, results):
        reaches_teacher = a.teacher_rows != []
        if reaches_teacher:
            assert isinstance(r, ComponentError) and r.component == "unet_teacher", prompt
        else:  # student_only, and refine rows the gate accepted, never call the teacher
            assert not isinstance(r, BaseException), r
            assert np.array_equal(r.images, a.images)
    engines["unet_teacher"] = teacher


def test_a_cancelled_program_stops_at_its_next_step_and_the_others_finish_unchanged(ort_pipeline, alone):
    batcher = _batcher(ort_pipeline)
    stop = {"now": False}

    def check() -> None:
        if stop["now"]:
            raise Cancelled("cancelled by the client")

    victim = ort_pipeline.program(["the victim"], [7], _settings(ort_pipeline, dict(strategy="teacher_only", teacher_steps=50)), check_cancelled=check)

    async def scenario():
        victim_task = asyncio.ensure_future(batcher.run(victim))
        others = [asyncio.ensure_future(batcher.run(ort_pipeline.program([p], [s], _settings(ort_pipeline, f)))) for p, s, f in CASES]
        while batcher.stats["unet_teacher"].calls < 2:
            await asyncio.sleep(0)
        stop["now"] = True
        try:
            return await asyncio.gather(victim_task, *others, return_exceptions=True)
        finally:
            await batcher.close()

    victim_result, *others = asyncio.run(scenario())
    assert isinstance(victim_result, Cancelled)
    # Teacher rows the others needed (CFG: two UNet rows per step), hence what the victim used.
    others_rows = sum(2 * _teacher_steps(ort_pipeline, a, f) for a, (_, _, f) in zip(alone, CASES))
    victim_rows = batcher.stats["unet_teacher"].rows - others_rows
    assert 0 < victim_rows < 2 * 50, f"the victim used {victim_rows} teacher rows: it did not stop early"
    for a, m in zip(alone, others):
        assert torch.equal(m.latents, a.latents)
