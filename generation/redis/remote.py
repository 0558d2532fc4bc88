""":class:`RemoteEngine`: the bot's engine when ``REDIS_URL`` is set. It loads no model.

Jobs are admitted into Redis (limits checked and charged there, shared by every bot process)
and run on ``jamgen worker`` hosts. The bot follows the jobs it admitted through the same
:class:`~generation.events.JobHandle` s the in-process :class:`~generation.worker.Engine`
gives, so the bot's pipeline is the same in both modes:

* a poll of the jobs' hashes (every ``poll`` seconds, one round trip) gives ``Started``,
  ``Progress`` (latest wins) and ``Queued`` (a job put back after its worker died), and the
  queue's order for positions and ETAs;
* the bot's :class:`~generation.redis.inbox.Inbox` gives the ends: ``Finished`` (with the
  result's bytes), ``Failed``, ``Cancelled``. An end is acknowledged by :meth:`settled`, once the
  bot has posted the result (or told the user why not).

An end for a job this process does not follow (it was admitted before a restart, and the
journal that knew it is elsewhere) goes to ``adopt``, which may start following it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from redis.exceptions import RedisError

from generation.admission import UserLimits
from generation.errors import EngineClosed, GenerationError, InvalidJob
from generation.events import Cancelled, Failed, Finished, JobEvent, JobHandle, JobState, Progress, Queued, Started
from generation.jobs import JobRequest
from generation.redis.inbox import Inbox
from generation.redis.inputs import upload_inputs
from generation.redis.jobs import RedisJobs
from generation.redis.records import Event, text
from generation.redis.registry import WorkerInfo, live_workers
from generation.redis.results import unpack
from generation.redis.retry import retrying
from generation.settings import EngineSettings
from generation.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Adopter = Callable[[str, JobRequest, str | None], Awaitable[JobHandle | None]]
CAPACITY_EVERY = 5.0  # seconds between reads of the worker registry
ADMIT_TIMEOUT = 2.0  # seconds: Discord wants an answer to a command within 3
EXPIRED = "This job's record is gone from the queue (it was kept too long); please ask again."
RESULT_GONE = "The track was made, but its file expired before it could be posted; please ask again."


@dataclass(frozen=True)
class Capacity:
    """What the live workers of the bot's models do together, from the registry: ``rate`` audio seconds per
    wall second (``None`` until one has measured it), in ``rows`` rows."""

    rate: float | None = None
    rows: int = 0
    workers: int = 0

    @classmethod
    def of(cls, workers: Sequence[WorkerInfo], models: Sequence[str]) -> Capacity:
        serving = [worker for worker in workers if worker.model in models]
        rates = [worker.throughput for worker in serving if worker.throughput is not None]
        return cls(sum(rates) if rates else None, sum(worker.rows for worker in serving), len(serving))


class QueueUnavailable(GenerationError):
    """Redis does not answer: nothing can be queued now."""


class RemoteEngine:
    """Admit to Redis, follow jobs there; the same reading API as :class:`~generation.worker.Engine`."""

    def __init__(
        self, settings: EngineSettings, jobs: RedisJobs, *, name: str, models: Sequence[str], poll: float = 0.5,
    ) -> None:
        self.settings = settings  # with the live workers' rows as max_batch (for ETAs), once they are known
        self._settings = settings
        self.redis = jobs
        self.name = name
        self.models = list(models)
        self.poll = poll
        self.inbox = Inbox(jobs.client, jobs.keys, name)
        self.throughput = Capacity()  # the live workers' (nothing is measured here)
        self.capacity_every = max(poll, CAPACITY_EVERY)
        self._capacity_at = -math.inf
        self.adopt: Adopter | None = None
        self._handles: dict[str, JobHandle] = {}
        self._entries: dict[str, str] = {}  # job id -> its end's inbox entry, acknowledged by settled()
        self._order: list[str] = []  # waiting jobs of every model, in the order they start
        self._durations: dict[str, float] = {}  # requested seconds of waiting jobs (other bots' too)
        self._announced: dict[str, int] = {}  # the positions last told to the handles
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.reachable = True

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start following (in the background: an unreachable Redis does not hold up the bot)."""
        for name, loop in (("jamgen-follow", self._follow_forever), ("jamgen-inbox", self._read_forever)):
            task = asyncio.create_task(loop(), name=name)
            self._tasks.add(task)

    async def warm_up(self, model: str | None = None) -> None:
        """Nothing to load here: the workers hold the models."""

    async def close(self, reason: str = "The bot is stopping.") -> None:
        """Stop following; every job still open here ends (for this process) as cancelled with ``reason``.
        Nothing changes in Redis: the jobs go on, and their ends wait in the inbox."""
        self._closing = True
        await cancel_and_wait(self._tasks)
        for handle in list(self._handles.values()):
            handle.emit(Cancelled(reason))

    # -- admitting and following --------------------------------------------------------------
    async def admit(
        self, requests: Sequence[JobRequest], *, limits: UserLimits, key: str, exempt: bool,
        metas: Sequence[str] | None = None, job_ids: Sequence[str] | None = None, charge: int | None = None,
        tokens: int | None = None,
    ) -> list[JobHandle]:
        """Check and charge the limits and queue ``requests``, atomically, in Redis; handles to follow them.

        Raises :class:`~generation.admission.RateLimited` (a refusal) or :class:`QueueUnavailable`.
        """
        if self._closing:
            raise EngineClosed("The bot is shutting down; try again in a minute.")
        try:
            async with asyncio.timeout(ADMIT_TIMEOUT):
                requests = [await self._upload(request) for request in requests]
                ids = await self.redis.admit(
                    requests, limits=limits, key=key, exempt=exempt, job_ids=job_ids, metas=metas,
                    notify=self.inbox.stream, charge=charge, tokens=tokens,
                )
        except (RedisError, TimeoutError) as exc:
            log.warning("Redis is unreachable; refusing a request: %s", exc)
            raise QueueUnavailable("The queue is unavailable right now; please try again in a minute.") from exc
        self._order += ids  # at the back until the next poll says where
        return [self.attach(job_id, request) for job_id, request in zip(ids, requests, strict=True)]

    def attach(self, job_id: str, request: JobRequest) -> JobHandle:
        """Follow a job that is in Redis already (admitted by this process, or before a restart)."""
        handle = self._handles.get(job_id)
        if handle is None:
            handle = self._handles[job_id] = JobHandle(job_id, request)
            self._durations[job_id] = request.duration
        return handle

    def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        """Cancel a job that is waiting; its end comes through the inbox. False: not waiting (or not ours)."""
        handle = self._handles.get(job_id)
        if handle is None or handle.state is not JobState.QUEUED or self._closing:
            return False
        self._spawn(self._remove(job_id, reason), f"jamgen-cancel-{job_id}")
        return True

    async def settled(self, job_id: str) -> None:
        """The bot is done with the job (posted, or told its user why not): acknowledge its end."""
        self._handles.pop(job_id, None)
        self._durations.pop(job_id, None)
        entry = self._entries.pop(job_id, None)
        if entry is not None:
            try:
                await self.inbox.ack(entry)
            except RedisError:  # read again after a restart; delivery checks the channel first
                log.warning("could not acknowledge the end of job %s", job_id, exc_info=True)

    def get(self, job_id: str) -> JobHandle | None:
        return self._handles.get(job_id)

    def jobs(self) -> list[JobHandle]:
        """The jobs this process follows that have not ended."""
        return [handle for handle in self._handles.values() if not handle.done]

    def positions(self) -> dict[str, int]:
        """Waiting job id -> 1-based position, over every bot's jobs (as of the last poll)."""
        return {job_id: index for index, job_id in enumerate(self._order, start=1)}

    def waiting(self) -> list[tuple[str, float]]:
        """Waiting jobs (every bot's) in start order, with their requested seconds."""
        return [(job_id, self._durations.get(job_id, self.settings.max_duration)) for job_id in self._order]

    # -- the poll -------------------------------------------------------------------------------
    async def _follow_forever(self) -> None:
        while True:
            try:
                await self._poll()
                self._reachable(True)
            except RedisError as exc:
                self._reachable(False, exc)
            await asyncio.sleep(self.poll)

    async def _poll(self) -> None:
        now = time.monotonic()
        if now - self._capacity_at >= self.capacity_every:
            self._capacity_at = now
            self._set_capacity(Capacity.of(await live_workers(self.redis.client, self.redis.keys), self.models))
        order: list[str] = []
        for model in self.models:
            order += await self.redis.ordered(model)
        await self._learn_durations([job_id for job_id in order if job_id not in self._durations])
        self._order = order
        await self._update(list(self.jobs()))
        self._announce_positions()

    def _announce_positions(self) -> None:
        """A ``Queued`` event for each waiting job whose place changed (the status message shows it)."""
        positions = self.positions()
        for job_id, position in positions.items():
            handle = self._handles.get(job_id)
            if handle is not None and handle.state is JobState.QUEUED and self._announced.get(job_id) != position:
                handle.emit(Queued(position))
        self._announced = positions

    async def _learn_durations(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        async with self.redis.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.redis.keys.job(job_id), "request")
            raw = await pipe.execute()
        for job_id, request in zip(job_ids, raw, strict=True):
            if request is not None:
                self._durations[job_id] = JobRequest.model_validate_json(request, context={"stored": True}).duration

    async def _update(self, handles: list[JobHandle]) -> None:
        if not handles:
            return
        async with self.redis.client.pipeline(transaction=False) as pipe:
            for handle in handles:
                pipe.hmget(self.redis.keys.job(handle.id), "state", "progress_done", "progress_total")
            rows = await pipe.execute()
        for handle, (state, done, total) in zip(handles, rows, strict=True):
            for event in self._changes(handle, state and text(state), done, total):
                handle.emit(event)

    def _changes(self, handle: JobHandle, state: str | None, done: Any, total: Any) -> list[JobEvent]:
        """What the job's hash says happened since the last poll (its end comes through the inbox)."""
        if state is None:
            return [] if handle.id in self._entries else [Failed(EXPIRED)]
        if state == "queued" and handle.state is not JobState.QUEUED:
            return [Queued(self.positions().get(handle.id, 0))]  # its worker died: back in the queue
        if state != "running":
            return []
        events: list[JobEvent] = [Started()] if handle.state is JobState.QUEUED else []
        if done is not None and total is not None:
            events.append(Progress(int(done), int(total)))
        return events

    def _set_capacity(self, capacity: Capacity) -> None:
        if capacity.workers == 0 and self.throughput.workers > 0:
            log.warning("no worker serves %s: jobs wait until one starts", ", ".join(self.models))
        self.throughput = capacity
        rows = capacity.rows or self._settings.max_batch
        self.settings = self._settings.model_copy(update={"max_batch": rows})

    # -- the inbox --------------------------------------------------------------------------------
    async def _read_forever(self) -> None:
        unreachable = partial(self._reachable, False)
        await retrying(self.redis.setup, 0.5, 10.0, on_error=unreachable)
        await retrying(self.inbox.setup, 0.5, 10.0, on_error=unreachable)
        while True:
            try:
                for event in await self.inbox.read(block=1.0):
                    await self._on_end(event)
                self._reachable(True)
            except RedisError as exc:
                self._reachable(False, exc)
                await asyncio.sleep(1.0)

    async def _on_end(self, event: Event) -> None:
        handle = self._handles.get(event.job_id) or await self._adopt(event.job_id)
        if handle is None:
            await self.inbox.ack(event.entry)
            return
        if handle.done:  # ended here already (read before, or its record expired): nothing more to post
            if event.job_id not in self._entries:
                await self.inbox.ack(event.entry)
            return
        self._entries[event.job_id] = event.entry
        handle.emit(await self._end(event))

    async def _adopt(self, job_id: str) -> JobHandle | None:
        record = await self.redis.job(job_id)
        if record is None or self.adopt is None:
            log.warning("job %s ended, but nothing here knows where to post it", job_id)
            return None
        request = JobRequest.model_validate_json(record.request_json, context={"stored": True})
        return await self.adopt(job_id, request, record.meta)

    async def _end(self, event: Event) -> Finished | Failed | Cancelled:
        if event.kind == "finished":
            blob = await self.redis.result(event.job_id)
            if blob is None:
                return Failed(RESULT_GONE)
            return Finished(await asyncio.to_thread(unpack, blob))
        if event.kind == "failed":
            return Failed(event.reason or "The job failed.")
        return Cancelled(event.reason or "cancelled")

    # -- helpers ------------------------------------------------------------------------------------
    async def _upload(self, request: JobRequest) -> JobRequest:
        """The request with its audio inputs in Redis: a worker on another host reads them there."""
        try:
            return await upload_inputs(self.redis.client, self.redis.keys, request, self.redis.keep_seconds)
        except OSError as exc:
            raise InvalidJob("The audio this job needs is no longer kept here; start a new one.") from exc

    async def _remove(self, job_id: str, reason: str) -> None:
        try:
            if not await self.redis.remove(job_id, reason):
                log.info("job %s was not waiting any more; it goes on", job_id)
        except RedisError:
            log.warning("could not cancel job %s: Redis is unreachable", job_id, exc_info=True)

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reachable(self, now: bool, exc: Exception | None = None) -> None:
        if now and not self.reachable:
            log.info("Redis answers again")
        elif not now and self.reachable:
            log.warning("Redis is unreachable (%s); retrying", exc)
        self.reachable = now

