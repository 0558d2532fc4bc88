"""The bot's side of a job: admit, submit, follow its events, edit the status, deliver.

One :class:`Ticket` per request. Each ticket runs as one task the pipeline owns and
awaits at shutdown (no fire-and-forget): it follows every job's event stream, keeps a
throttled status message up to date and posts each result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import discord

from bot.delivery import deliver, file_name, save_audio
from bot.errors import UserError, user_message
from bot.settings import BotSettings
from bot.store import GuildSettings, JobRecord, Store
from bot.throttle import ThrottledEditor
from bot.tickets import Ticket, ended_line, queued_line, running_line
from bot.ui.embeds import result_embed
from generation.events import Cancelled, Failed, Finished, JobHandle, JobState, Progress, Started
from generation.jobs import JobRequest
from generation.scheduler import Admission, UserLimits, estimate_waits
from generation.worker import Engine

log = logging.getLogger(__name__)

ViewFactory = Callable[[str], discord.ui.View]
RESTART_QUEUED = "The bot is restarting and your job had not started: please send it again in a minute."
RESTART_RUNNING = "The bot stopped before your job finished: please send it again in a minute."


@dataclass(frozen=True)
class Asker:
    """Who asked, and where: what limits and channel checks need."""

    user_id: int
    guild_id: int | None
    role_ids: frozenset[int]

    @classmethod
    def of(cls, interaction: discord.Interaction) -> Asker:
        roles = getattr(interaction.user, "roles", [])
        return cls(interaction.user.id, interaction.guild_id, frozenset(role.id for role in roles))


class Pipeline:
    def __init__(
        self, client: discord.Client, engine: Engine, store: Store, settings: BotSettings, view_factory: ViewFactory,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.engine = engine
        self.store = store
        self.settings = settings
        self.admission = Admission(clock)
        self.accepting = True
        self._view_factory = view_factory
        self._tickets: set[Ticket] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._progress: dict[str, tuple[float, float]] = {}  # job id -> (fraction, when)
        self._audio_dir = engine.settings.data_dir / "audio"

    # -- limits ---------------------------------------------------------------------------
    def limits(self, guild: GuildSettings) -> UserLimits:
        s = self.settings
        return UserLimits(
            max_active=guild.max_jobs or s.user_max_jobs,
            rate_count=guild.rate_count or s.user_rate_count,
            rate_window=guild.rate_window or s.user_rate_window,
            queue_cap=s.queue_cap,
        )

    def max_duration(self, guild: GuildSettings) -> int:
        engine_max = int(self.engine.settings.max_duration)
        return min(guild.max_duration or engine_max, engine_max)

    def tickets(self) -> list[Ticket]:
        return sorted(self._tickets, key=lambda ticket: ticket.created_at)

    def tickets_of(self, user_id: int) -> list[Ticket]:
        return [ticket for ticket in self._tickets if ticket.user_id == user_id]

    def admit(self, asker: Asker, jobs: int, title: str, interaction: discord.Interaction) -> Ticket:
        """Check every limit synchronously (before the deferral) and reserve a ticket."""
        if not self.accepting:
            raise UserError("The bot is restarting; try again in a minute.")
        guild = self.store.guild(asker.guild_id)
        exempt = guild.exempt_role_id is not None and guild.exempt_role_id in asker.role_ids
        reserved = sum(ticket.reserved for ticket in self._tickets if not ticket.handles)
        self.admission.admit(
            f"{asker.guild_id}:{asker.user_id}", self.limits(guild), active=len(self.tickets_of(asker.user_id)),
            queued_total=len(self.engine.positions()) + reserved + jobs - 1, exempt=exempt,
        )
        ticket = Ticket(interaction, asker.user_id, asker.guild_id, interaction.channel_id or 0, title, reserved=jobs)
        self._tickets.add(ticket)
        return ticket

    def release(self, ticket: Ticket, refund: bool = False) -> None:
        self._tickets.discard(ticket)
        if refund:
            self.admission.refund(f"{ticket.guild_id}:{ticket.user_id}")

    # -- launching --------------------------------------------------------------------------
    async def launch(self, ticket: Ticket, requests: Sequence[JobRequest]) -> None:
        """Submit the ticket's jobs (after the deferral) and follow them in an owned task."""
        try:
            for request in requests:
                ticket.handles.append(self.engine.submit(request))
            for handle in ticket.handles:  # recorded before anyone reads "queued", so buttons work later
                await self.store.add_job(self._record(ticket, handle))
        except Exception as exc:
            for handle in ticket.handles:
                self.engine.cancel(handle.id, "not queued")
            self.release(ticket, refund=True)
            await ticket.interaction.edit_original_response(content=f"❌ {user_message(exc)}"[:2000])
            return
        for handle in ticket.handles:
            ticket.set_line(handle.id, "⏳ queued")
        task = asyncio.create_task(self._run(ticket), name=f"ticket-{ticket.handles[0].id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _record(ticket: Ticket, handle: JobHandle) -> JobRecord:
        return JobRecord(
            job_id=handle.id, guild_id=ticket.guild_id, channel_id=ticket.channel_id, user_id=ticket.user_id,
            request=handle.request, state="queued", created_at=time.time(),
        )

    async def _run(self, ticket: Ticket) -> None:
        async def edit(text: str) -> None:
            mentions = discord.AllowedMentions.none()
            await ticket.interaction.edit_original_response(content=text, allowed_mentions=mentions)

        status = ThrottledEditor(edit, self.settings.edit_interval)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(status.run())
                await asyncio.gather(*(self._follow(ticket, handle, status) for handle in ticket.handles))
                status.close()
        finally:
            self.release(ticket)
            for handle in ticket.handles:
                self._progress.pop(handle.id, None)

    async def _follow(self, ticket: Ticket, handle: JobHandle, status: ThrottledEditor) -> None:
        """Turn one job's events into status lines, and its result into a post. Never raises."""
        try:
            async for event in handle.events():
                await self._on_event(ticket, handle, event)
                status.set(self._render(ticket))
        except Exception as exc:
            ticket.set_line(handle.id, ended_line("failed", user_message(exc)))
            self.engine.cancel(handle.id, "delivery failed")
            status.set(ticket.render())
            await self._set_state(handle.id, "failed")

    async def _on_event(self, ticket: Ticket, handle: JobHandle, event: object) -> None:
        if isinstance(event, Started):
            self._progress[handle.id] = (0.0, time.monotonic())
            await self._set_state(handle.id, "running")
        elif isinstance(event, Progress):
            self._progress[handle.id] = (event.fraction, time.monotonic())
        elif isinstance(event, Finished):
            ticket.set_line(handle.id, "📤 uploading")
            await self._deliver(ticket, handle, event)
        elif isinstance(event, Failed):
            ticket.set_line(handle.id, ended_line("failed", event.reason))
            await self._set_state(handle.id, "failed")
        elif isinstance(event, Cancelled):
            ticket.set_line(handle.id, ended_line("cancelled", event.reason))
            await self._set_state(handle.id, "cancelled")

    async def _deliver(self, ticket: Ticket, handle: JobHandle, event: Finished) -> None:
        request, audio = handle.request, event.audio
        path = await save_audio(self._audio_dir, handle.id, audio)
        started = handle.started_at or handle.submitted_at
        embed = result_embed(
            request, job_id=handle.id, user_id=ticket.user_id, queued_for=started - handle.submitted_at,
            generated_in=(handle.finished_at or time.monotonic()) - started, length=audio.duration,
            title=ticket.title.split("\n", 1)[0][:256].replace("**", ""),
        )
        done = await deliver(
            self.client, ticket, audio, file_name(request.prompt, request.seed, audio), embed,
            self._view_factory(handle.id),
        )
        where = "below" if done.via == "followup" else "in the channel"
        ticket.set_line(handle.id, ended_line("done", f"posted {where}"))
        await self.store.set_job_state(handle.id, "delivered", str(path))

    async def _set_state(self, job_id: str, state: str) -> None:
        try:
            await self.store.set_job_state(job_id, state)
        except Exception:
            log.exception("could not record job %s as %s", job_id, state)

    # -- status text ------------------------------------------------------------------------
    def _render(self, ticket: Ticket) -> str:
        waits = self.waits()
        positions = self.engine.positions()
        for handle in ticket.handles:
            if handle.state is JobState.QUEUED and handle.id in positions:
                wait = waits[handle.id][0] if waits and handle.id in waits else None
                ticket.set_line(handle.id, queued_line(positions[handle.id], len(positions), wait))
            elif handle.state is JobState.RUNNING:
                fraction, _ = self._progress.get(handle.id, (0.0, 0.0))
                ticket.set_line(handle.id, running_line(fraction, self._left(handle)))
            elif handle.state is JobState.ENCODING:
                ticket.set_line(handle.id, "🎚️ encoding")
        return ticket.render()

    def _left(self, handle: JobHandle) -> float | None:
        """Seconds left for a running job, from its own measured pace."""
        fraction, when = self._progress.get(handle.id, (0.0, 0.0))
        if handle.started_at is None or fraction <= 0.0:
            rate = self.engine.throughput.rate
            return None if rate is None else handle.request.duration / rate
        elapsed = when - handle.started_at
        return max(0.0, elapsed * (1 - fraction) / fraction - (time.monotonic() - when))

    def waits(self) -> dict[str, tuple[float, float]] | None:
        """job id -> (seconds until it starts, seconds until it is done), from measured throughput."""
        positions = self.engine.positions()
        queued = sorted((job for job in self.engine.jobs() if job.id in positions), key=lambda job: positions[job.id])
        running = [job for job in self.engine.jobs() if job.state is JobState.RUNNING]
        remaining = max((self._left(job) or 0.0 for job in running), default=0.0)
        return estimate_waits(
            [(job.id, job.request.duration) for job in queued], running_remaining=remaining,
            rate=self.engine.throughput.rate, max_batch=self.engine.settings.max_batch,
        )

    # -- shutdown -----------------------------------------------------------------------------
    async def shutdown(self, grace: float) -> None:
        """Refuse new work, tell queued users, let the running batch finish (up to ``grace`` s), close."""
        self.accepting = False
        for handle in self.engine.jobs():
            if handle.state is JobState.QUEUED:
                self.engine.cancel(handle.id, RESTART_QUEUED)
        running = [asyncio.ensure_future(handle.outcome()) for handle in self.engine.jobs()]
        if running:
            log.info("waiting up to %.0f s for %d running jobs", grace, len(running))
            await asyncio.wait(running, timeout=grace)
        await self.engine.close(RESTART_RUNNING)
        await asyncio.gather(*running, return_exceptions=True)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

