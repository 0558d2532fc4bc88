"""What a Redis worker counts about itself: its registry entry and its metrics."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable

from generation.metrics import FailureReason, Metrics
from generation.redis.registry import WorkerInfo
from generation.worker import Engine

Clock = Callable[[], float]


class StepRate:
    """Decode steps per wall second, from the running jobs' progress snapshots, as an exponentially
    weighted average (weight ``alpha`` per sample).

    A job's progress grows by one per step of its decode loop, so the steps between two of its
    snapshots over the time between them is a sample of the loop's speed. A job's first snapshot
    only starts its clock: its wait and its prefill are not steps.
    """

    def __init__(self, alpha: float = 0.3, clock: Clock = time.monotonic) -> None:
        self.alpha = alpha
        self._clock = clock
        self._last: dict[str, tuple[int, float]] = {}
        self.rate: float | None = None

    def progress(self, job: str, done: int) -> None:
        now = self._clock()
        last = self._last.get(job)
        self._last[job] = (done, now)
        if last is None or done <= last[0] or now <= last[1]:
            return
        sample = (done - last[0]) / (now - last[1])
        if math.isfinite(sample):
            self.rate = sample if self.rate is None else self.alpha * sample + (1 - self.alpha) * self.rate

    def forget(self, job: str) -> None:
        self._last.pop(job, None)


class WorkerBook:
    """A worker's counts and speeds, kept in ``metrics`` as they change and reported by :meth:`info`."""

    def __init__(self, name: str, engine: Engine, metrics: Metrics, clock: Clock = time.time) -> None:
        self.name = name
        self.engine = engine
        self.metrics = metrics
        self.steps = StepRate()
        self.done = 0
        self.failed = 0
        self.started = clock()
        metrics.rows.set(engine.settings.max_batch)

    def finished(self) -> None:
        self.done += 1
        self.metrics.ended("done")

    def failed_job(self, reason: FailureReason) -> None:
        self.failed += 1
        self.metrics.ended("failed")
        self.metrics.failed(reason)

    def lost(self) -> None:
        """A job taken over by another worker (this one missed its heartbeats)."""
        self.metrics.failed("lost")

    def dead_lettered(self, count: int) -> None:
        """Jobs this worker's reaper failed for good (their workers kept dying on them)."""
        for _ in range(count):
            self.metrics.failed("dead_letter")

    def observe(self, rows_in_use: int) -> None:
        """Bring the rows and speed gauges up to date."""
        self.metrics.rows_in_use.set(rows_in_use)
        self.metrics.speeds(self.engine.throughput.rate, self.steps.rate)

    def info(self, rows_in_use: int) -> WorkerInfo:
        settings = self.engine.settings
        return WorkerInfo(
            name=self.name, model=settings.model, rows=settings.max_batch, rows_in_use=rows_in_use,
            batching=settings.batching, throughput=self.engine.throughput.rate, steps_per_second=self.steps.rate,
            jobs_done=self.done, jobs_failed=self.failed, started=self.started, host=socket.gethostname(),
            pid=os.getpid(),
        )
