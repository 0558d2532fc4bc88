"""A job's life as a stream of events, read through its :class:`JobHandle`.

Events are emitted on the event loop's thread only; the worker hops there with
``call_soon_threadsafe`` before emitting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import Enum

from generation.encode import EncodedAudio
from generation.errors import JobCancelled, JobFailed
from generation.jobs import JobRequest


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    ENCODING = "encoding"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Queued:
    position: int  # 1 = next to run


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class Progress:
    done: int  # decoding steps
    total: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass(frozen=True)
class Encoding:
    pass


@dataclass(frozen=True)
class Finished:
    audio: EncodedAudio


@dataclass(frozen=True)
class Failed:
    reason: str


@dataclass(frozen=True)
class Cancelled:
    reason: str = "cancelled"


JobEvent = Queued | Started | Progress | Encoding | Finished | Failed | Cancelled
TerminalEvent = Finished | Failed | Cancelled

_STATES: dict[type, JobState] = {
    Queued: JobState.QUEUED,
    Started: JobState.RUNNING,
    Progress: JobState.RUNNING,
    Encoding: JobState.ENCODING,
    Finished: JobState.DONE,
    Failed: JobState.FAILED,
    Cancelled: JobState.CANCELLED,
}


class JobHandle:
    """What a client holds for one submitted job: its state, its events, its result."""

    def __init__(self, job_id: str, request: JobRequest) -> None:
        self.id = job_id
        self.request = request
        self.state = JobState.QUEUED
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.attempts = 1  # runs started, counting the first
        self._events: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._outcome: asyncio.Future[TerminalEvent] = asyncio.get_running_loop().create_future()

    @property
    def done(self) -> bool:
        return self.state.terminal

    def emit(self, event: JobEvent) -> bool:
        """Record ``event``; ignored (False) once the job has ended."""
        if self.done:
            return False
        self.state = _STATES[type(event)]
        if isinstance(event, Started) and self.started_at is None:
            self.started_at = time.monotonic()
        self._events.put_nowait(event)
        if self.state.terminal:
            self.finished_at = time.monotonic()
            self._outcome.set_result(event)  # type: ignore[arg-type]
        return True

    async def events(self) -> AsyncIterator[JobEvent]:
        """Every event from now until (and including) the terminal one. One reader per job."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Finished | Failed | Cancelled):
                return

    async def outcome(self) -> TerminalEvent:
        return await asyncio.shield(self._outcome)

    async def result(self) -> EncodedAudio:
        """The encoded audio, or :class:`JobFailed` / :class:`JobCancelled`."""
        outcome = await self.outcome()
        if isinstance(outcome, Finished):
            return outcome.audio
        if isinstance(outcome, Failed):
            raise JobFailed(outcome.reason)
        raise JobCancelled(outcome.reason)
