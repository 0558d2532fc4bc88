""":class:`RedisJobs`: the queue, the limits and the leases of jobs, in one Redis.

Every step that reads and writes more than one key is one Lua script (``lua/``), so that any
number of bots and workers can share the queue. See the package docstring for the key layout.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from generation.admission import UserLimits
from generation.jobs import JobRequest
from generation.queue import round_robin
from generation.redis.keys import DEFAULT_PREFIX, GROUP, Keys, model_tag, owner_member
from generation.redis.limits import Admit
from generation.redis.records import Event, JobRecord, Lease, Reclaimed, fields_of, text, texts
from generation.redis.scripts import Scripts

log = logging.getLogger(__name__)


class RedisJobs:
    """Jobs in Redis: admitted with the per-user limits, taken fairly, held under a lease.

    ``client`` must return bytes (``decode_responses=False``, redis-py's default): results
    are audio. ``attempts`` is ``JAMGEN_JOB_ATTEMPTS``, the runs a job gets when workers die on
    it; ``keep_seconds`` how long an ended job's record and result stay; ``events_maxlen`` the
    approximate length the events stream is trimmed to.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        attempts: int = 2,
        keep_seconds: float = 3600.0,
        events_maxlen: int = 10_000,
    ) -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisJobs needs a client with decode_responses=False (results are bytes)")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        if not (math.isfinite(keep_seconds) and keep_seconds > 0):
            raise ValueError(f"keep_seconds must be a positive number, got {keep_seconds}")
        self.client = client
        self.keys = Keys(prefix)
        self.attempts = attempts
        self.keep_seconds = keep_seconds
        self._scripts = Scripts(client, prefix, keep_seconds, events_maxlen)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisJobs:
        """A :class:`RedisJobs` on a new client for ``url`` (``redis://host:port/db``)."""
        return cls(Redis.from_url(url), **options)

    async def setup(self) -> None:
        """Create the run stream's consumer group at ``0`` (so it sees every entry); idempotent."""
        try:
            await self.client.xgroup_create(self.keys.run, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- the queue ----------------------------------------------------------------------------
    async def admit(
        self,
        requests: Sequence[JobRequest],
        *,
        limits: UserLimits,
        key: str | None = None,
        exempt: bool = False,
        queue_retry_after: float | None = None,
        job_ids: Sequence[str] | None = None,
        metas: Sequence[str] | None = None,
        notify: str = "",
        charge: int | None = None,
        tokens: int | None = None,
    ) -> list[str]:
        """Check and charge one owner's limits and queue ``requests``, atomically; their job ids.

        Each request costs one job against ``max_active``, one token and one queue place, as
        ``Admission.admit(cost=len(requests))``. ``key`` is whose limits they are (default:
        the owner's member name). Raises :class:`~generation.admission.RateLimited` with the
        in-process words, or :class:`~generation.redis.limits.DuplicateJob`. ``metas``: per job, the
        client's own record of it (kept as the hash's ``meta``); ``notify``: the stream the jobs' ends
        go to (a bot's own, :meth:`Keys.notify`), instead of ``events``. ``charge``: what the requests count
        together against ``max_active`` and the rate, instead of one each (the bot's one request for three
        takes counts one, as in process); it is given back when the last of them ends. ``tokens``: what they
        take from the rate, instead of the charge (the bot's long tracks count one per 30 s).
        """
        if not requests:
            raise ValueError("nothing to admit")
        ids = list(job_ids) if job_ids is not None else [secrets.token_hex(6) for _ in requests]
        key = key if key is not None else owner_member(requests[0].owner)
        admit = Admit(ids, requests, limits, key, exempt, queue_retry_after, metas, charge, notify, tokens)
        admit.check(await self._scripts.call("admit", *admit.args()))
        return ids

    async def take(self, consumer: str, model: str, free_rows: int) -> list[Lease]:
        """Up to ``free_rows`` waiting jobs of ``model``, in fair order, now held by ``consumer``."""
        rows = await self._scripts.call("take", consumer, model_tag(model), free_rows)
        return [
            Lease(text(job_id), text(entry), consumer, int(attempt), text(request), bool(alone))
            for job_id, entry, attempt, request, alone in rows
        ]

    async def ordered(self, model: str) -> list[str]:
        """The waiting jobs of ``model`` in the order they will start (one at a time, nothing else arriving)."""
        lanes = await self._scripts.call("positions", model_tag(model))
        return [text(job_id) for job_id in round_robin(lanes)]

    async def positions(self, model: str) -> dict[str, int]:
        """job id -> 1-based position in :meth:`ordered`."""
        return {job_id: index for index, job_id in enumerate(await self.ordered(model), start=1)}

    async def remove(self, job_id: str, reason: str = "cancelled") -> bool:
        """Cancel a waiting job (its owner keeps their turn if they have more); False if it is not waiting."""
        return bool(await self._scripts.call("remove", job_id, reason))

    # -- leases -------------------------------------------------------------------------------
    async def heartbeat(self, leases: Sequence[Lease]) -> set[str]:
        """Keep ``leases`` from being reclaimed; the ids of the jobs their workers no longer hold."""
        lost: set[str] = set()
        for consumer in dict.fromkeys(lease.consumer for lease in leases):
            mine = {lease.entry: lease.job_id for lease in leases if lease.consumer == consumer}
            gone = await self._scripts.call("heartbeat", consumer, *mine)
            lost.update(mine[text(entry)] for entry in gone)
        if lost:
            log.warning("lost %d job(s) to a reclaim: %s", len(lost), sorted(lost))
        return lost

    async def reclaim(self, reaper: str, min_idle: float, forget_idle: float | None = None) -> Reclaimed:
        """Put back the jobs held ``min_idle`` seconds without a heartbeat (see ``lua/reclaim.lua``).

        ``forget_idle``: also drop consumers idle that long that hold nothing (``None``: never).
        """
        forget = -1 if forget_idle is None else _ms(forget_idle)
        reply = await self._scripts.call("reclaim", reaper, _ms(min_idle), self.attempts, forget)
        done = Reclaimed(*(texts(part) for part in reply))
        if done.requeued or done.dead:
            log.warning("reclaimed %d job(s), %d dead-lettered", len(done.requeued), len(done.dead))
        return done

    async def complete(self, lease: Lease, result: bytes) -> bool:
        """Store the result and end the job, if ``lease`` still holds; False: the worker lost the job."""
        return bool(await self._scripts.call("complete", *_fence(lease), result))

    async def fail(self, lease: Lease, reason: str) -> bool:
        """End the job as failed (the job's own fault), if ``lease`` still holds."""
        return bool(await self._scripts.call("fail", *_fence(lease), reason))

    async def release(self, leases: Sequence[Lease]) -> list[bool]:
        """Give jobs back untouched (at the front, attempt unchanged), keeping the order they were taken in."""
        held = [bool(await self._scripts.call("release", *_fence(lease))) for lease in reversed(leases)]
        return held[::-1]

    async def progress(self, lease: Lease, done: int, total: int) -> bool:
        """Record and publish a progress snapshot (latest wins), if ``lease`` still holds."""
        return bool(await self._scripts.call("progress", *_fence(lease), done, total))

    # -- reading ------------------------------------------------------------------------------
    async def job(self, job_id: str) -> JobRecord | None:
        raw = await self.client.hgetall(self.keys.job(job_id))
        return JobRecord.decode(job_id, raw) if raw else None

    async def result(self, job_id: str) -> bytes | None:
        value = await self.client.get(self.keys.result(job_id))
        return value.encode() if isinstance(value, str) else value

    async def waiting(self) -> int:
        """Jobs waiting, all models together (what the queue cap counts)."""
        return int(await self.client.get(self.keys.queued) or 0)

    async def active(self, key: str) -> int:
        """``key``'s jobs queued or running (what ``max_active`` counts)."""
        return int(await self.client.get(self.keys.active(key)) or 0)

    async def events(self, after: str = "0-0", count: int | None = None) -> list[Event]:
        """Entries of the events stream after ``after``."""
        entries = await self.client.xrange(self.keys.events, f"({after}", "+", count=count)
        return [Event.decode(entry, fields) for entry, fields in entries or []]

    async def dead_letters(self) -> list[dict[str, str]]:
        """The dead stream: ``job``, ``attempts``, ``worker``, ``reason`` of every dead-lettered job."""
        entries = await self.client.xrange(self.keys.dead)
        return [fields_of(fields) for _, fields in entries or []]


def _fence(lease: Lease) -> list[str | int]:
    return [lease.consumer, lease.job_id, lease.entry, lease.attempt]


def _ms(seconds: float) -> int:
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"expected a number of seconds >= 0, got {seconds}")
    return math.ceil(seconds * 1000)
