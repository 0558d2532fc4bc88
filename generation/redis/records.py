"""What :class:`~generation.redis.jobs.RedisJobs` hands back, decoded from Redis' bytes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from generation.jobs import JobRequest
from generation.redis.keys import member_owner


def text(value: Any) -> str:
    """A Redis string (bytes) as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def texts(values: Sequence[Any]) -> list[str]:
    return [text(value) for value in values]


def fields_of(raw: Mapping[Any, Any] | None) -> dict[str, str]:
    """A hash's or a stream entry's fields as text."""
    return {text(name): text(value) for name, value in (raw or {}).items()}


@dataclass(frozen=True)
class Lease:
    """A job a worker holds: the fence of everything it reports about the job.

    ``entry`` is the job's entry on the run stream (in ``consumer``'s pending list) and
    ``attempt`` the run it is on (1 for the first). ``alone``: this is the job's last attempt,
    and nothing runs beside it.
    """

    job_id: str
    entry: str
    consumer: str
    attempt: int
    request_json: str
    alone: bool

    def request(self) -> JobRequest:
        """The job's request (audio inputs are not checked again: they may be gone since)."""
        return JobRequest.model_validate_json(self.request_json, context={"stored": True})


@dataclass(frozen=True)
class Reclaimed:
    """What one reclaim pass did.

    ``requeued``: jobs put back at the front of their owners' lanes (in the order they had been
    taken), ``alone`` the ones of those whose next run is their last and runs alone; ``dead``:
    jobs past their last attempt, failed and dead-lettered; ``forgotten``: consumers removed
    from the group (idle, with nothing pending).
    """

    requeued: list[str]
    alone: list[str]
    dead: list[str]
    forgotten: list[str]


@dataclass(frozen=True)
class JobRecord:
    """A job's hash, decoded."""

    job_id: str
    state: str  # queued, running, done, failed, cancelled
    owner: str | None
    model: str
    request_json: str
    attempt: int
    created: float
    worker: str | None = None  # the worker that took it last
    started: float | None = None  # when it was taken last (server time, s): jobs of one take share it
    entry: str | None = None
    alone: bool = False
    reason: str | None = None
    progress: tuple[int, int] | None = None  # (steps done, steps in all), the latest snapshot
    meta: str | None = None  # the admitting client's own record of the job

    @classmethod
    def decode(cls, job_id: str, raw: Mapping[Any, Any]) -> JobRecord:
        fields = fields_of(raw)
        progress = None
        if "progress_done" in fields:
            progress = (int(fields["progress_done"]), int(fields["progress_total"]))
        return cls(
            job_id=job_id, state=fields["state"], owner=member_owner(fields["member"]), model=fields["model"],
            request_json=fields["request"], attempt=int(fields["attempt"]), created=float(fields["created"]),
            worker=fields.get("worker"), started=float(fields["started"]) if "started" in fields else None,
            entry=fields.get("entry"), alone=fields.get("alone") == "1",
            reason=fields.get("reason"), progress=progress, meta=fields.get("meta"),
        )


@dataclass(frozen=True)
class Event:
    """An entry of the events stream: ``kind`` is ``finished``, ``failed`` or ``cancelled``."""

    entry: str
    job_id: str
    kind: str
    reason: str | None = None

    @classmethod
    def decode(cls, entry: Any, raw: Mapping[Any, Any] | None) -> Event:
        fields = fields_of(raw)
        return cls(text(entry), fields["job"], fields["kind"], fields.get("reason"))
