"""``jamgen worker``: one GPU host's engine, fed from the Redis queue.

The worker keeps a model loaded in an in-process :class:`~generation.worker.Engine` and its
rows busy. Whenever the engine has free rows it takes that many jobs of its model from Redis
(in fair order; each now sits in this worker's pending list) and submits them; with
continuous batching a running batch picks them up at its next step. It follows every job and
settles it in Redis: the result, a failure, or (at shutdown) a release. Everything it reports
is fenced on its lease, so a worker that lost a job publishes nothing for it.

Beside the feed, four loops: heartbeats of the jobs it holds (a job whose lease is gone is
cancelled here), the reaper that puts back the jobs of workers that stopped heart-beating,
a listener that wakes the feed when jobs are queued, and the worker's own heartbeat: its entry
in the registry (:mod:`generation.redis.registry`, gone ``reclaim_after`` after its last
heartbeat, or at once when it stops) and its metrics (:mod:`generation.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

from redis.exceptions import RedisError

from generation.errors import EngineClosed
from generation.events import Cancelled, Encoding, Failed, Finished, JobHandle, Progress
from generation.metrics import Metrics, failure_reason
from generation.redis import registry
from generation.redis.inputs import fetch_inputs, fetched_files
from generation.redis.jobs import RedisJobs
from generation.redis.records import Lease
from generation.redis.results import pack
from generation.redis.retry import retrying
from generation.redis.settings import WorkerTimings
from generation.redis.status import WorkerBook
from generation.tasks import cancel_and_wait
from generation.worker import Engine

log = logging.getLogger(__name__)
T = TypeVar("T")


def worker_name() -> str:
    """A consumer name unique to this process: host, pid and a random tag."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class RedisWorker:
    """Feed ``engine`` from ``jobs`` for ``engine.settings.model`` until :meth:`stop`."""

    def __init__(self, jobs: RedisJobs, engine: Engine, *, name: str | None = None,
                 timings: WorkerTimings | None = None, metrics: Metrics | None = None) -> None:
        self.jobs = jobs
        self.engine = engine
        self.name = name or worker_name()
        self.timings = timings or WorkerTimings()
        self.model = engine.settings.model
        self.metrics = metrics if metrics is not None else Metrics()
        self.book = WorkerBook(self.name, engine, self.metrics)
        self._held: dict[str, Lease] = {}  # run entry -> lease, from the take until it is settled
        self._rows: set[str] = set()  # entries of held jobs waiting in the engine or generating
        self._lost: set[str] = set()  # entries whose lease is gone: settled by nobody here
        self._followers: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.taking = True  # False while Redis is unreachable
        self._inputs = engine.settings.data_dir / "inputs"  # audio inputs fetched from Redis, while their job runs

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Take nothing more; running jobs finish (within ``grace``), the rest is given back."""
        self._stopping.set()
        self._wake.set()

    @property
    def held(self) -> list[str]:
        """The ids of the jobs this worker holds."""
        return [lease.job_id for lease in self._held.values()]

    async def run(self) -> None:
        """Serve until :meth:`stop`; returns once every held job is settled."""
        await retrying(self.jobs.setup, self.timings.retry, self.timings.heartbeat, stop=self._stopping)
        log.info("worker %s serving %s with %d rows", self.name, self.model, self.engine.settings.max_batch)
        with contextlib.suppress(RedisError):
            await self._publish()
        beside = [
            asyncio.create_task(self._every(self.timings.heartbeat, self._publish), name="jamgen-registry"),
            asyncio.create_task(self._every(self.timings.heartbeat, self._beat), name="jamgen-heartbeat"),
            asyncio.create_task(self._every(self.timings.reap_every, self._reap), name="jamgen-reaper"),
            asyncio.create_task(self._listen(), name="jamgen-wake"),
        ]
        try:
            await self._feed()
            await self._drain()
        finally:
            await cancel_and_wait(beside)
            await self._give_back(list(self._held.values()))
            with contextlib.suppress(RedisError):
                await registry.withdraw(self.jobs.client, self.jobs.keys, self.name)
            self.book.observe(0)
        log.info("worker %s stopped", self.name)

    # -- the feed ----------------------------------------------------------------------------
    def free_rows(self) -> int:
        return self.engine.settings.max_batch - len(self._rows)

    async def _feed(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            if self.free_rows() > 0 and await self._take() > 0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.timings.poll)

    async def _take(self) -> int:
        try:
            leases = await self.jobs.take(self.name, self.model, self.free_rows())
        except RedisError as exc:
            self._unreachable(exc)
            return 0
        self.taking = True
        for lease in leases:
            self._start(lease)
        return len(leases)

    def _start(self, lease: Lease) -> None:
        for stale in [held for held in self._held.values() if held.job_id == lease.job_id]:
            self._lose(stale)  # Redis gave the job out again: the old run here lost it
        self._held[lease.entry] = lease
        self._rows.add(lease.entry)
        self._spawn(self._run(lease), lease.job_id)

    async def _run(self, lease: Lease) -> None:
        """Fetch the job's audio inputs, submit it to the engine (one engine job per run), follow it."""
        try:
            request = await retrying(
                partial(fetch_inputs, self.jobs.client, self.jobs.keys, lease.request(), self._inputs, lease.entry),
                self.timings.retry, self.timings.heartbeat,
            )
            if self._stopping.is_set():
                raise EngineClosed("the worker is stopping")
            handle = self.engine.submit(request, job_id=lease.entry)
        except EngineClosed:  # not the job's fault: another worker takes it
            await self._settle(lease, partial(self.jobs.release, [lease]))
            return
        except Exception as exc:  # a request this worker cannot run: the job's own fault
            log.warning("job %s refused: %s", lease.job_id, exc)
            await self._end(lease, partial(self.jobs.fail, lease, str(exc)), partial(self.book.failed_job, "invalid"))
            return
        try:
            await self._follow(lease, handle)
        finally:
            for path in fetched_files(self._inputs, lease.entry):
                path.unlink(missing_ok=True)

    def _spawn(self, work: Coroutine[Any, Any, None], job_id: str) -> None:
        task = asyncio.create_task(work, name=f"jamgen-follow-{job_id}")
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    async def _follow(self, lease: Lease, handle: JobHandle) -> None:
        """Report one job's events to Redis; settle it when it ends."""
        async for event in handle.events():
            if isinstance(event, Progress):
                self.book.steps.progress(lease.entry, event.done)
                await self._quietly(self.jobs.progress(lease, event.done, event.total))
            elif isinstance(event, Encoding):
                self._free(lease.entry)
            elif isinstance(event, Finished):
                await self._end(lease, partial(self.jobs.complete, lease, pack(event.audio)), self.book.finished)
            elif isinstance(event, Failed):
                counted = partial(self.book.failed_job, failure_reason(event.reason))
                await self._end(lease, partial(self.jobs.fail, lease, event.reason), counted)
            elif isinstance(event, Cancelled):
                if lease.entry in self._lost:
                    self._forget(lease.entry)
                else:
                    await self._settle(lease, partial(self.jobs.release, [lease]))

    async def _settle(self, lease: Lease, report: Callable[[], Awaitable[T]]) -> T:
        """Report a job's end, retrying while Redis is away (a fenced report is safe to repeat)."""
        try:
            return await retrying(report, self.timings.retry, self.timings.heartbeat)
        finally:
            self._forget(lease.entry)

    async def _end(self, lease: Lease, report: Callable[[], Awaitable[bool]], count: Callable[[], None]) -> None:
        """Settle a job's end; ``count`` it if the lease still held (a fenced-out report counts nowhere)."""
        if await self._settle(lease, report):
            count()

    def _free(self, entry: str) -> None:
        self._rows.discard(entry)
        self._wake.set()

    def _forget(self, entry: str) -> None:
        self.book.steps.forget(entry)
        self._free(entry)
        self._held.pop(entry, None)
        self._lost.discard(entry)

    def _lose(self, lease: Lease) -> None:
        """The lease is gone (reclaimed): stop the job here and report nothing for it."""
        if lease.entry not in self._lost:
            self.book.lost()
        self._lost.add(lease.entry)
        if not self.engine.cancel(lease.entry, "This job was given to another worker."):
            self._forget(lease.entry)

    # -- beside the feed ---------------------------------------------------------------------
    async def _every(self, seconds: float, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except RedisError as exc:
                self._unreachable(exc)

    async def _beat(self) -> None:
        leases = list(self._held.values())
        if not leases:
            return
        lost = await self.jobs.heartbeat(leases)
        for lease in leases:
            if lease.job_id in lost and lease.entry in self._held:
                self._lose(lease)

    async def _reap(self) -> None:
        done = await self.jobs.reclaim(self.name, self.timings.reclaim_after)
        self.book.dead_lettered(len(done.dead))

    async def _publish(self) -> None:
        """The worker's own heartbeat: its registry entry (alive for ``reclaim_after``) and its gauges."""
        self.book.observe(len(self._rows))
        info = self.book.info(len(self._rows))
        await registry.publish(self.jobs.client, self.jobs.keys, info, self.timings.reclaim_after)
        self.metrics.queue_depth.set(await self.jobs.waiting())

    async def _listen(self) -> None:
        """Wake the feed when jobs of this model are queued (lossy: the feed also polls)."""
        while True:
            try:
                async with self.jobs.client.pubsub() as pubsub:
                    await pubsub.subscribe(self.jobs.keys.wake(self.model))
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake.set()
            except RedisError as exc:
                self._unreachable(exc)
                await asyncio.sleep(self.timings.heartbeat)

    def _unreachable(self, exc: RedisError) -> None:
        if self.taking:
            log.warning("Redis is unreachable (%s): taking no new jobs until it is back", exc)
        self.taking = False

    # -- shutdown ----------------------------------------------------------------------------
    async def _drain(self) -> None:
        """Give back jobs that have not started; let running ones finish within ``grace``."""
        queued = set(self.engine.positions())
        waiting = [lease for lease in self._held.values() if lease.entry in queued]
        for lease in waiting:
            self._lost.add(lease.entry)  # given back here, not by its follower
            self.engine.cancel(lease.entry, "The worker is stopping.")
        await self._give_back(waiting)
        if self._followers:
            _, late = await asyncio.wait(set(self._followers), timeout=self.timings.grace)
            for entry in list(self._rows):
                self.engine.cancel(entry, "The worker is stopping.")
            if late:
                await asyncio.gather(*late, return_exceptions=True)

    async def _give_back(self, leases: list[Lease]) -> None:
        if not leases:
            return
        with contextlib.suppress(RedisError):
            await self.jobs.release(leases)
        for lease in leases:
            self._forget(lease.entry)

    async def _quietly(self, report: Awaitable[object]) -> None:
        """Progress is latest-wins and lossy: a snapshot Redis missed is not retried."""
        try:
            await report
        except RedisError as exc:
            self._unreachable(exc)
