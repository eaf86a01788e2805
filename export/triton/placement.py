"""Model instances: per GPU (one Triton per GPU, student and teacher UNets split by their share of the
work) and on a CPU-only host (one single-threaded instance of every component per core)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from bll_python.components import COMPONENTS
from bll_python.layout import BLS_MODEL

BLS = "bls"

# Admission control: a request that cannot start within this long at the deployment's expected
# service rate is better answered UNAVAILABLE at once (the client retries or sheds) than queued
# until its deadline passes.
ADMISSION_WAIT_S = 10.0


def admission_queue_size(instances: int, image_seconds: float | None, max_wait_s: float = ADMISSION_WAIT_S) -> int:
    """How many requests may wait for a BLS instance: as many one-image requests as the machine
    finishes in ``max_wait_s`` (``image_seconds``: the whole machine's seconds per image at the
    default settings, ``Deployment.expected_image_seconds``), and at least one per instance.

    Requests beyond it are refused by Triton's queue policy with UNAVAILABLE, before any work.
    """
    if instances < 1:
        raise ValueError(f"instances must be >= 1, got {instances}")
    if not image_seconds or image_seconds <= 0:
        return instances
    return max(instances, math.floor(max_wait_s / image_seconds))


def teacher_share(accept_rate: float, student_steps: int, teacher_steps: int, cost_ratio: float = 1.0) -> float:
    """Fraction of UNet GPU time spent in the teacher.

    Per image the student runs ``student_steps`` and, for the ``1 - accept_rate`` rejected rows, the
    teacher runs ``teacher_steps``; ``cost_ratio`` is a teacher step's cost over a student step's
    (2.0 when the student skips CFG through a guidance embedding and the teacher does not).
    """
    if not 0.0 <= accept_rate <= 1.0:
        raise ValueError(f"accept_rate must be in [0, 1], got {accept_rate}")
    teacher = (1.0 - accept_rate) * teacher_steps * cost_ratio
    return teacher / (student_steps + teacher)


class Placement:
    """Instances per GPU of each component (default: its record's ``instances``) and of the BLS (``bls``).

    Scale out by adding GPUs (one Triton each), not by splitting one. Each BLS instance runs one
    request at a time (no BLS batching, so an accepted image never waits for a neighbour's teacher
    work) and spends part of it in Python between component calls, so the BLS gets
    ``BLS_PER_UNET_INSTANCE`` instances per UNet instance unless told otherwise: enough requests in
    flight for the components' dynamic batchers to fill their preferred batches, while every BLS
    instance (a process with its own CUDA context, ~0.5 GB) costs GPU memory.
    """

    BLS_PER_UNET_INSTANCE = 2

    def __init__(self, **counts: int) -> None:
        known = {name: c.instances for name, c in COMPONENTS.items()}
        known[BLS] = self.BLS_PER_UNET_INSTANCE * sum(counts.get(n, known[n]) for n in ("unet_student", "unet_teacher"))
        unknown = sorted(set(counts) - set(known))
        if unknown:
            raise TypeError(f"Placement: no component {unknown}; place {sorted(known)}")
        bad = {name: n for name, n in counts.items() if not isinstance(n, int) or n < 1}
        if bad:
            raise ValueError(f"Placement: instance counts must be whole numbers >= 1, got {bad}")
        self.counts: dict[str, int] = {**known, **counts}

    @classmethod
    def from_accept_rate(
        cls, accept_rate: float, *, student_steps: int, teacher_steps: int, unet_instances: int = 2, cost_ratio: float = 1.0, **others: int
    ) -> "Placement":
        """Split ``unet_instances`` between student and teacher in proportion to their UNet time."""
        if unet_instances < 2:
            raise ValueError("need at least 2 UNet instances per GPU: one student, one teacher")
        share = teacher_share(accept_rate, student_steps, teacher_steps, cost_ratio)
        teacher = min(max(round(unet_instances * share), 1), unet_instances - 1)
        return cls(unet_student=unet_instances - teacher, unet_teacher=teacher, **others)

    def count(self, model: str) -> int:
        """Instances of a component, or of the BLS by its model name."""
        return self.counts[BLS if model == BLS_MODEL else model]

    def __getattr__(self, name: str) -> int:
        try:
            return self.__dict__["counts"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Placement) and other.counts == self.counts

    def __repr__(self) -> str:
        return f"Placement({', '.join(f'{k}={v}' for k, v in self.counts.items())})"

    def to_json(self) -> dict[str, Any]:
        return dict(self.counts)


@dataclass(frozen=True)
class CpuPlacement:
    """Model instances on a CPU-only host with ``cores`` cores.

    Every component gets one single-threaded instance per core, so the student UNet alone (a
    student_only load) or the teacher alone can keep every core busy. Each BLS instance runs one
    request at a time and spends part of it in its own Python work and waiting for components, so
    there are ``BLS_PER_CORE`` of them per core: enough requests in flight to keep the component
    instances fed, and a bound on the memory they hold (each imports torch, ~0.4 GB).
    """

    cores: int
    BLS_PER_CORE = 4
    MAX_BLS = 16

    @classmethod
    def for_this_host(cls) -> "CpuPlacement":
        return cls(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))

    @property
    def component_instances(self) -> int:
        return self.cores

    @property
    def bls_instances(self) -> int:
        return min(self.BLS_PER_CORE * self.cores, self.MAX_BLS)
