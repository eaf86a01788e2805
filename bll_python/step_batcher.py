"""Continuous batching: many pipeline programs in flight, their component calls merged.

A request's pipeline is a program (``AdaptivePipeline.program``) that yields one component call at a
time. The batcher runs many programs at once and keeps a queue per component. A component's lane
takes the calls waiting in its queue (oldest first, up to the component's max batch), runs them as
ONE engine call, splits the outputs back and resumes each program, which then yields its next call
to whichever queue it needs. So rows of different requests, at different denoising steps, share a
UNet call (every UNet graph takes a per-row timestep), and a new request joins at the next call of
each component, as continuous batching does for LLM tokens.

A row's result never depends on its neighbours: its scheduler state (DPM-Solver++ history, LCM/TCD
noise from its own generator) lives inside its program, and the merged call only concatenates
inputs along the batch axis (ONNX Runtime and TensorRT compute rows independently).

Lanes of different components run concurrently, so the student and the teacher UNet are busy at the
same time; a component may have several lanes (one per model instance) to keep several cores or
engine instances fed. The batcher is asyncio and Triton-free: engines are async callables (ONNX
Runtime in a thread pool in-process, ``async_exec`` BLS calls in Triton).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

import torch

from bll_python.pipeline import BatchResult, EngineCall, Program, Tensors

AsyncEngine = Callable[[Tensors], Awaitable[Tensors]]


@dataclass
class _Pending:
    call: EngineCall
    future: asyncio.Future


@dataclass
class LaneStats:
    """What a component's lanes did: calls, rows, and calls that merged several programs."""

    calls: int = 0
    rows: int = 0
    merged_calls: int = 0
    programs_per_call: list[int] = field(default_factory=list)


class StepBatcher:
    """Runs pipeline programs concurrently, merging their pending calls per component.

    ``max_rows[c]`` caps the rows of one call to component ``c`` (its spec's max batch); a single
    call larger than that is passed through alone (the engine splits it). ``lanes[c]`` is how many
    calls to ``c`` may be in flight at once (default 1).
    """

    def __init__(self, engines: Mapping[str, AsyncEngine], max_rows: Mapping[str, int], lanes: Mapping[str, int] | None = None) -> None:
        self.engines = dict(engines)
        self.max_rows = dict(max_rows)
        self.lanes = {name: max(1, (lanes or {}).get(name, 1)) for name in self.engines}
        self.stats = {name: LaneStats() for name in self.engines}
        self._queues: dict[str, deque[_Pending]] = {name: deque() for name in self.engines}
        self._idle: dict[str, int] = dict(self.lanes)
        self._wakeup: dict[str, asyncio.Event] = {}
        self._workers: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ programs

    async def run(self, program: Program) -> BatchResult:
        """Drive ``program`` to its end; its calls share engine calls with other running programs."""
        self._start()
        call = next(program)
        while True:
            try:
                outputs = await self._submit(call)
            except BaseException:
                program.close()
                raise
            try:
                call = program.send(outputs)
            except StopIteration as done:
                return done.value

    def _submit(self, call: EngineCall) -> asyncio.Future:
        if call.component not in self._queues:
            raise KeyError(f"no engine for component {call.component!r}")
        future = asyncio.get_running_loop().create_future()
        self._queues[call.component].append(_Pending(call, future))
        self._wakeup[call.component].set()
        return future

    # ------------------------------------------------------------------ lanes

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None:
            raise RuntimeError("a StepBatcher serves one event loop")
        self._loop = loop
        for name, count in self.lanes.items():
            self._wakeup[name] = asyncio.Event()
            self._workers += [loop.create_task(self._lane(name), name=f"lane-{name}-{i}") for i in range(count)]

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    def _take(self, name: str) -> list[_Pending]:
        """The calls this lane runs next: oldest first, its fair share of the waiting rows."""
        queue = self._queues[name]
        waiting = sum(p.call.rows for p in queue)
        # With several idle lanes, split the waiting rows between them so that every lane
        # (a core, an engine instance) gets work instead of one lane taking everything.
        share = min(self.max_rows[name], math.ceil(waiting / max(1, self._idle[name])))
        batch = [queue.popleft()]
        rows = batch[0].call.rows
        # Only calls of the same shapes merge (per-request image sizes); the others keep their places.
        key = batch[0].call.shape_key
        kept, full = [], False
        while queue:
            pending = queue.popleft()
            full = full or (pending.call.shape_key == key and rows + pending.call.rows > share)
            if not full and pending.call.shape_key == key:
                rows += pending.call.rows
                batch.append(pending)
            else:
                kept.append(pending)
        queue.extend(kept)
        return batch

    async def _lane(self, name: str) -> None:
        engine, queue, wakeup, stats = self.engines[name], self._queues[name], self._wakeup[name], self.stats[name]
        while True:
            while not queue:
                wakeup.clear()
                await wakeup.wait()
            batch = self._take(name)
            if queue:
                wakeup.set()  # more waiting: let an idle sibling lane take it
            self._idle[name] -= 1
            try:
                inputs = _concat([p.call.inputs for p in batch])
                outputs = await engine(inputs)
            except asyncio.CancelledError:
                for p in batch:
                    p.future.cancel()
                raise
            except BaseException as e:  # a failed call fails the programs in it, not the lane
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            finally:
                self._idle[name] += 1
            stats.calls += 1
            stats.rows += sum(p.call.rows for p in batch)
            stats.merged_calls += len(batch) > 1
            stats.programs_per_call.append(len(batch))
            offset = 0
            for p in batch:
                n = p.call.rows
                if not p.future.done():
                    p.future.set_result({k: v[offset : offset + n] for k, v in outputs.items()})
                offset += n


def _concat(parts: list[Tensors]) -> Tensors:
    if len(parts) == 1:
        return parts[0]
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def threaded(engines: Mapping[str, Callable[[Tensors], Tensors]], lanes: Mapping[str, int] | None = None) -> dict[str, AsyncEngine]:
    """Async engines over in-process (synchronous) ones: each component's calls run in its own
    thread pool, one thread per lane. ONNX Runtime and torch release the GIL while they compute, so
    lanes of different components use different cores."""
    from concurrent.futures import ThreadPoolExecutor

    wrapped: dict[str, AsyncEngine] = {}
    for name, engine in engines.items():
        pool = ThreadPoolExecutor(max(1, (lanes or {}).get(name, 1)), thread_name_prefix=f"engine-{name}")

        async def call(inputs: Tensors, engine=engine, pool=pool) -> Tensors:
            return await asyncio.get_running_loop().run_in_executor(pool, engine, inputs)

        wrapped[name] = call
    return wrapped
