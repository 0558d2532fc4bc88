"""How the bot's pipeline reaches its engine: in this process, or through Redis.

The two deployments differ in a few places only, and each place is a method here, so
the pipeline (:mod:`bot.pipeline`) and recovery (:mod:`bot.recovery`) read the same for both:

* **Admission.** In process, the limits are checked and charged by this process's
  :class:`~generation.admission.Admission` and the jobs are submitted once journaled. On
  Redis, the check, the charge and the queueing are one atomic step there, shared by every
  bot process, so the jobs exist as soon as they are admitted.
* **Following.** On Redis, the end of a job is acknowledged (:meth:`OnRedis.settled`) once
  the bot is done with it; jobs outlive the bot, so a restart follows them again instead of
  submitting them again, and a job another bot admitted can be adopted.
* **Shutdown.** In process, waiting jobs are paused and the running batch gets its grace;
  on Redis the jobs go on without this process and only the posts under way are awaited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from bot.tickets import Ticket
from generation.admission import Admission, UserLimits
from generation.events import JobHandle, JobState
from generation.jobs import JobRequest
from generation.redis.remote import Adopter, RemoteEngine
from generation.worker import Engine

log = logging.getLogger(__name__)


class Deployment(Protocol):
    jobs_outlive_bot: bool  # on Redis: a restart follows its jobs again, they were never stopped

    def adopt_with(self, adopter: Adopter) -> None:
        """Where the end of a job this process does not follow goes (a job another run of the bot admitted)."""

    async def admit(
        self, ticket: Ticket, requests: Sequence[JobRequest], *, key: str, limits: UserLimits, exempt: bool,
        active: int, reserved: int, metas: Callable[[], Sequence[str]],
    ) -> None:
        """Check (and charge) ``key``'s limits for ``ticket``; raises :class:`~generation.admission.RateLimited`.
        ``active``, ``reserved``: the user's live tickets and the jobs reserved but not queued (in process);
        ``metas``: each job's own record, for other bots (on Redis)."""

    def refund(self, ticket: Ticket) -> None:
        """Give back what admitting ``ticket`` charged (it never started)."""

    def submit(self, ticket: Ticket, requests: Sequence[JobRequest]) -> None:
        """Queue the admitted ticket's jobs (as ``ticket.job_ids``), if admission did not already."""

    def rejoin(self, job_id: str, request: JobRequest) -> JobHandle:
        """A journaled job, after a restart: follow it again."""

    async def settled(self, job_id: str) -> None:
        """The bot is done with the job: posted, or its user told why not."""

    async def shutdown(self, grace: float, tasks: set[asyncio.Task[None]]) -> None:
        """Stop the engine, giving the work under way ``grace`` seconds; ``tasks``: the tickets' own (the caller
        awaits them after)."""


class InProcess:
    """The engine runs in this process: limits are this process's, jobs stop with it."""

    jobs_outlive_bot = False

    def __init__(self, engine: Engine, admission: Admission) -> None:
        self.engine = engine
        self.admission = admission

    async def admit(
        self, ticket: Ticket, requests: Sequence[JobRequest], *, key: str, limits: UserLimits, exempt: bool,
        active: int, reserved: int, metas: Callable[[], Sequence[str]],
    ) -> None:
        queued = len(self.engine.positions()) + reserved + len(requests) - 1
        self.admission.admit(key, limits, active=active, queued_total=queued, exempt=exempt, tokens=ticket.tokens)

    def refund(self, ticket: Ticket) -> None:
        self.admission.refund(f"{ticket.guild_id}:{ticket.user_id}", ticket.tokens)

    def submit(self, ticket: Ticket, requests: Sequence[JobRequest]) -> None:
        for job_id, request in zip(ticket.job_ids, requests, strict=True):
            ticket.handles.append(self.engine.submit(request, job_id=job_id))

    def rejoin(self, job_id: str, request: JobRequest) -> JobHandle:
        return self.engine.submit(request, job_id=job_id)

    def adopt_with(self, adopter: Adopter) -> None:
        """Nothing to adopt: every job of this engine was admitted by this process."""

    async def settled(self, job_id: str) -> None:
        """Nothing to acknowledge: the engine's handle is all there is."""

    async def shutdown(self, grace: float, tasks: set[asyncio.Task[None]]) -> None:
        """Waiting jobs keep their place in the journal (paused); the running batch gets ``grace`` s."""
        for handle in self.engine.jobs():
            if handle.state is JobState.QUEUED:
                self.engine.cancel(handle.id, "paused")
        running = [asyncio.ensure_future(handle.outcome()) for handle in self.engine.jobs()]
        if running:
            log.info("waiting up to %.0f s for %d running jobs", grace, len(running))
            await asyncio.wait(running, timeout=grace)
        await self.engine.close("paused")
        await asyncio.gather(*running, return_exceptions=True)


class OnRedis:
    """The engine is Redis and its workers: limits and jobs are shared by every bot process and outlive this one."""

    jobs_outlive_bot = True

    def __init__(self, engine: RemoteEngine) -> None:
        self.engine = engine

    def adopt_with(self, adopter: Adopter) -> None:
        self.engine.adopt = adopter

    async def admit(
        self, ticket: Ticket, requests: Sequence[JobRequest], *, key: str, limits: UserLimits, exempt: bool,
        active: int, reserved: int, metas: Callable[[], Sequence[str]],
    ) -> None:
        ticket.handles += await self.engine.admit(  # one request counts one, however many takes (as in process)
            requests, limits=limits, key=key, exempt=exempt, metas=metas(), job_ids=ticket.job_ids, charge=1,
            tokens=ticket.tokens,
        )
        ticket.reserved = 0

    def refund(self, ticket: Ticket) -> None:
        """Redis keeps the rate charge: the jobs were queued there, and other bots may have seen them."""

    def submit(self, ticket: Ticket, requests: Sequence[JobRequest]) -> None:
        """Admission queued them already."""

    def rejoin(self, job_id: str, request: JobRequest) -> JobHandle:
        return self.engine.attach(job_id, request)

    async def settled(self, job_id: str) -> None:
        await self.engine.settled(job_id)  # acknowledged: not read again

    async def shutdown(self, grace: float, tasks: set[asyncio.Task[None]]) -> None:
        """Stop following (the jobs' ends wait in the inbox) and give the posts under way ``grace`` s."""
        await self.engine.close("paused")
        if tasks:
            await asyncio.wait(set(tasks), timeout=grace)


def deployment_for(engine: Engine | RemoteEngine, admission: Admission) -> Deployment:
    return OnRedis(engine) if isinstance(engine, RemoteEngine) else InProcess(engine, admission)
