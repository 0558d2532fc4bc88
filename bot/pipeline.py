"""The bot's side of a job: admit, journal, submit, follow its events, edit the status, deliver.

One :class:`Ticket` per request. Each ticket runs as one task the pipeline owns and
awaits at shutdown (no fire-and-forget): it follows every job's event stream, keeps a
throttled status message up to date and posts each result. Every step is journaled
(:mod:`bot.journal`) so that a restart can pick up where the bot stopped (:mod:`bot.recovery`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import discord

from bot.delivery import Delivery, Post, deliver, file_name, find_post, picture_for, save_audio
from bot.deployments import deployment_for
from bot.errors import UserError, user_message
from bot.journal import JobRecord, State
from bot.recovery import kept_audio, reply_of, timing_of
from bot.reply import Reply
from bot.settings import BotSettings
from bot.store import GuildSettings, Store
from bot.takes import READY, Takes, post_takes
from bot.throttle import ThrottledEditor
from bot.tickets import Ticket, Timing, ended_line, queued_line, running_line
from bot.ui.embeds import result_embed
from bot.ui.text import format_seconds
from generation.admission import Admission, UserLimits, estimate_waits, estimate_waits_continuous
from generation.encode import EncodedAudio
from generation.events import Cancelled, Encoding, Failed, Finished, JobHandle, JobState, Progress, Started
from generation.jobs import JobRequest
from generation.metrics import FailureReason, Metrics, failure_reason
from generation.redis.remote import RemoteEngine
from generation.windows import charge
from generation.worker import Engine

log = logging.getLogger(__name__)

ViewFactory = Callable[[str], discord.ui.View]
SectionEnd = Callable[[str, str, State], Awaitable[None]]  # (jam id, job id, how it ended)
SNAPSHOT_TTL = 0.25  # seconds a computed queue snapshot (positions, ETAs) is reused
LONG_TRACK = 60.0  # seconds: for a longer track the first reply states the expected wait
PAUSED = "⏸ The bot is restarting: your job keeps its place and goes on when the bot is back."


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


def rate_tokens(requests: Sequence[JobRequest], limits: UserLimits) -> int:
    """What a request takes from its user's rate: its track's 30 s units (however many takes), at most the whole
    allowance (a track longer than that could otherwise never start)."""
    return min(charge(max(request.duration for request in requests)), limits.rate_count)


class Pipeline:
    def __init__(
        self, client: discord.Client, engine: Engine | RemoteEngine, store: Store, settings: BotSettings,
        view_factory: ViewFactory,
        clock: Callable[[], float] = time.monotonic, metrics: Metrics | None = None,
    ) -> None:
        self.client = client
        self.engine = engine
        self.store = store
        self.settings = settings
        self.admission = Admission(clock)
        self.metrics = metrics if metrics is not None else Metrics()
        self.accepting = True
        self.stopping = False
        self._view_factory = view_factory
        self._tickets: set[Ticket] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._progress: dict[str, tuple[float, float]] = {}  # job id -> (fraction, when)
        self.audio_dir = engine.settings.data_dir / "audio"
        self._look_first: set[str] = set()  # adopted jobs: another process may have posted them already
        self.on_section_end: SectionEnd | None = None  # set by the jam service
        self.deployment = deployment_for(engine, self.admission)
        self.deployment.adopt_with(self._adopt)
        self._snapshot_at: tuple[float, tuple[dict[str, int], dict[str, tuple[float, float]] | None]] | None = None

    # -- limits ---------------------------------------------------------------------------
    def limits(self, guild: GuildSettings) -> UserLimits:
        s = self.settings
        return UserLimits(
            max_active=guild.max_jobs or s.user_max_jobs,
            rate_count=guild.rate_count or s.user_rate_count,
            rate_window=guild.rate_window or s.user_rate_window,
            queue_cap=s.queue_cap,
        )

    @property
    def duration_cap(self) -> int:
        """The deployment's longest track (``JAMGEN_MAX_DURATION``), in whole seconds."""
        return int(self.engine.settings.max_duration)

    def max_duration(self, guild: GuildSettings) -> int:
        return min(guild.max_duration or self.duration_cap, self.duration_cap)

    def tickets(self) -> list[Ticket]:
        return sorted(self._tickets, key=lambda ticket: ticket.created_at)

    def tickets_of(self, user_id: int, guild_id: int | None = None) -> list[Ticket]:
        """The user's live tickets (in one guild, when given: limits are per person, per server)."""
        return [
            ticket for ticket in self._tickets
            if ticket.user_id == user_id and (guild_id is None or ticket.guild_id == guild_id)
        ]

    async def admit(
        self, asker: Asker, requests: Sequence[JobRequest], title: str, where: discord.Interaction | Reply,
        jam_id: str | None = None, takes: Takes | None = None,
    ) -> Ticket:
        """Check every limit (before the deferral: a refusal is instant) and reserve a ticket. ``where``: the
        interaction that asked, or a reply made for it (a jam's section, posted in the jam's thread).

        In process, the limits are checked here and the jobs are submitted by :meth:`launch`. On Redis
        the check, the charge and the queueing are one step there, shared by every bot process
        (:mod:`bot.deployments`).
        """
        if not self.accepting:
            raise UserError("The bot is restarting; try again in a minute.")
        guild = self.store.guild(asker.guild_id)
        exempt = guild.exempt_role_id is not None and guild.exempt_role_id in asker.role_ids
        key, limits = f"{asker.guild_id}:{asker.user_id}", self.limits(guild)
        reply = Reply.of(where) if isinstance(where, discord.Interaction) else where
        ticket = Ticket(reply, title, reserved=len(requests), tokens=rate_tokens(requests, limits), jam_id=jam_id,
                        takes=takes)
        ticket.job_ids = [secrets.token_hex(6) for _ in requests]
        ticket.note = self._long_track_note(requests, ticket.tokens)
        await self.deployment.admit(
            ticket, requests, key=key, limits=limits, exempt=exempt,
            active=len(self.tickets_of(asker.user_id, asker.guild_id)),
            reserved=sum(ticket.reserved for ticket in self._tickets if not ticket.handles),
            metas=lambda: [self._record(ticket, job_id, request).model_dump_json()
                           for job_id, request in zip(ticket.job_ids, requests, strict=True)],
        )
        self._tickets.add(ticket)
        return ticket

    def release(self, ticket: Ticket, refund: bool = False) -> None:
        """Forget the ticket; with ``refund`` (it never started), its jobs leave the queue and its charge is
        given back (in process; Redis keeps the rate charge)."""
        self._tickets.discard(ticket)
        if refund:
            for handle in ticket.handles:
                self.engine.cancel(handle.id, "not queued")
            self.deployment.refund(ticket)

    # -- launching --------------------------------------------------------------------------
    async def launch(self, ticket: Ticket, requests: Sequence[JobRequest]) -> bool:
        """Submit the ticket's jobs and journal them (before the user reads "queued"), then follow them. False
        when they could not be (the user read why)."""
        try:
            self.deployment.submit(ticket, requests)
            await self.store.journal.add(self._record(ticket, handle.id, handle.request) for handle in ticket.handles)
        except Exception as exc:
            self.release(ticket, refund=True)
            await ticket.reply.edit_status(f"❌ {user_message(exc)}"[:2000])
            return False
        self.follow(ticket)
        return True

    def follow(self, ticket: Ticket, kept: Sequence[JobRecord] = ()) -> None:
        """Run the ticket in an owned task: its jobs' events, and the delivery of ``kept`` audio."""
        self._tickets.add(ticket)
        for handle in ticket.handles:
            ticket.set_line(handle.id, "⏳ queued")
        task = asyncio.create_task(self._run(ticket, kept), name=f"ticket-{ticket.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _record(ticket: Ticket, job_id: str, request: JobRequest) -> JobRecord:
        reply = ticket.reply
        return JobRecord(
            job_id=job_id, ticket_id=ticket.id, guild_id=reply.guild_id, channel_id=reply.channel_id,
            user_id=reply.user_id, request=request, title=ticket.title, application_id=reply.application_id,
            token=reply.token, interaction_at=reply.interaction_at, created_at=time.time(), jam_id=ticket.jam_id,
            take=None if ticket.takes is None else ticket.takes.number_of(job_id),
        )

    async def _run(self, ticket: Ticket, kept: Sequence[JobRecord]) -> None:
        async def edit(text: str) -> None:
            if await ticket.reply.edit_status(text) and ticket.reply.status_message_id is not None:
                await self.store.journal.set_status_message(ticket.id, ticket.reply.status_message_id)

        status = ThrottledEditor(edit, self.settings.edit_interval)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(status.run())
                status.set(self._render(ticket))  # the first text now, while the jobs are surely still queued
                await asyncio.gather(
                    *(self._follow(ticket, handle, status) for handle in ticket.handles),
                    *(self._guard(ticket, record.job_id, status, self._redeliver(ticket, record, status))
                      for record in kept),
                )
                await post_takes(self, ticket, status)  # a ticket of takes posts them once all have ended
                status.close()
        finally:
            self.release(ticket)
            for handle in ticket.handles:
                self._progress.pop(handle.id, None)

    async def _follow(self, ticket: Ticket, handle: JobHandle, status: ThrottledEditor) -> None:
        async def events() -> None:
            async for event in handle.events():
                await self._on_event(ticket, handle, event)
                status.set(lambda: self._render(ticket))

        await self._guard(ticket, handle.id, status, events())
        await self.deployment.settled(handle.id)  # posted, or its user told why not

    async def _guard(self, ticket: Ticket, job_id: str, status: ThrottledEditor, work: Awaitable[None]) -> None:
        """The job pipeline's error boundary: whatever fails, the user reads why (with an error id)."""
        try:
            await work
        except Exception as exc:
            reason = user_message(exc)
            ticket.set_line(job_id, ended_line("failed", reason))
            self.engine.cancel(job_id, "delivery failed")
            status.set(ticket.render())
            await self._journal(job_id, State.FAILED, reason=reason)
            self._count_failure("error")
            await self._ended(ticket, job_id, State.FAILED)
            await self._tell_if_gone(ticket, f"your track `{job_id}` failed: {reason}")

    def _count_failure(self, reason: FailureReason) -> None:
        self.metrics.ended("failed")
        self.metrics.failed(reason)

    async def _on_event(self, ticket: Ticket, handle: JobHandle, event: object) -> None:
        if isinstance(event, Started):
            self._progress[handle.id] = (0.0, time.monotonic())
            await self._journal(handle.id, State.RUNNING)
        elif isinstance(event, Progress):
            self._progress[handle.id] = (event.fraction, time.monotonic())
        elif isinstance(event, Encoding):
            await self._journal(handle.id, State.ENCODING)
        elif isinstance(event, Finished):
            started = handle.started_at or handle.submitted_at
            done = handle.finished_at or time.monotonic()
            await self._deliver(ticket, handle.id, handle.request, event.audio,
                                Timing(started - handle.submitted_at, done - started))
        elif isinstance(event, Failed):
            ticket.set_line(handle.id, ended_line("failed", event.reason))
            await self._journal(handle.id, State.FAILED, reason=event.reason)
            self._count_failure(failure_reason(event.reason))
            await self._ended(ticket, handle.id, State.FAILED)
            await self._tell_if_gone(ticket, f"your track `{handle.id}` failed: {event.reason}")
        elif isinstance(event, Cancelled):
            await self._on_cancelled(ticket, handle, event)

    async def _on_cancelled(self, ticket: Ticket, handle: JobHandle, event: Cancelled) -> None:
        if self.stopping:  # not the user's doing: the journal keeps the job for the next start
            ticket.set_line(handle.id, PAUSED)
            await self._journal(handle.id, State.QUEUED, detail="the bot stopped")
            return
        ticket.set_line(handle.id, ended_line("cancelled", event.reason))
        await self._journal(handle.id, State.CANCELLED, reason=event.reason)
        self.metrics.ended("cancelled")
        await self._ended(ticket, handle.id, State.CANCELLED)

    # -- delivery -----------------------------------------------------------------------------
    async def _deliver(
        self, ticket: Ticket, job_id: str, request: JobRequest, audio: EncodedAudio, timing: Timing
    ) -> None:
        if job_id in self._look_first and await self._found_posted(ticket, job_id, "found posted already"):
            return
        ticket.set_line(job_id, "📤 uploading")
        path = await save_audio(self.audio_dir, job_id, audio)
        await self.store.journal.move(job_id, State.DELIVERING, audio_path=str(path))
        if ticket.takes is not None:  # kept, and posted with the ticket's other takes (bot/takes.py)
            ticket.takes.hold(job_id, request, audio, timing)
            ticket.set_line(job_id, READY)
            return
        post = await self.card(ticket, job_id, request, audio, timing)
        await self.posted(ticket, [job_id], await deliver(ticket.reply, post))

    async def card(
        self, ticket: Ticket, job_id: str, request: JobRequest, audio: EncodedAudio, timing: Timing,
        title: str | None = None,
    ) -> Post:
        """The track's post: its card (``title``: default, the ticket's), waveform and buttons."""
        embed = result_embed(
            request, job_id=job_id, user_id=ticket.user_id, queued_for=timing.queued_for,
            generated_in=timing.generated_in, length=audio.duration,
            title=(title or ticket.title.split("\n", 1)[0].replace("**", ""))[:256],
        )
        picture = await picture_for(job_id, audio, request.max_file_bytes)
        view = self._view_factory(job_id) if ticket.jam_id is None else discord.ui.View()  # a section: no buttons
        headline = "your track is ready" if ticket.jam_id is None else "your section is ready"
        return Post(job_id, ticket.user_id, audio, file_name(request.prompt, request.seed, audio), embed, view,
                    picture=picture, headline=headline)

    async def posted(self, ticket: Ticket, job_ids: Sequence[str], done: Delivery) -> None:
        """Journal the jobs of a post as delivered (in one message: ``done``), and say so."""
        where = "below" if done.via == "followup" else "in the channel"
        for job_id in job_ids:
            await self.store.journal.move(job_id, State.DELIVERED, message_id=done.message_id)
            await self._ended(ticket, job_id, State.DELIVERED)
            self._look_first.discard(job_id)
            self.metrics.ended("done")
            self.metrics.delivery_seconds.observe(max(0.0, time.time() - ticket.reply.interaction_at))
            ticket.set_line(job_id, ended_line("done", f"posted {where}"))

    async def post_alone(self, ticket: Ticket, job_id: str, card: Awaitable[Post], status: ThrottledEditor) -> None:
        """Post one track's ``card`` (when its takes could not be posted together), unless it is posted already."""
        async def work() -> None:
            post = await card
            if not await self._found_posted(ticket, job_id, "found posted already"):
                await self.posted(ticket, [job_id], await deliver(ticket.reply, post))

        await self._guard(ticket, job_id, status, work())

    async def _redeliver(self, ticket: Ticket, record: JobRecord, status: ThrottledEditor) -> None:
        posted = record.state is State.DELIVERING and await self._found_posted(
            ticket, record.job_id, "found posted after a restart"
        )
        if not posted:
            audio = await kept_audio(record)
            await self._deliver(ticket, record.job_id, record.request, audio, await timing_of(self.store, record))
        status.set(ticket.render())  # no event stream follows a kept job: say it is done here

    async def _found_posted(self, ticket: Ticket, job_id: str, detail: str) -> bool:
        """Whether the job's card is in the channel already (then it is journaled as delivered): the
        at-most-once check before a post that may have happened before a crash or in another process."""
        if await find_post(ticket.reply, job_id) is None:
            return False
        await self.store.journal.move(job_id, State.DELIVERED, detail=detail)
        ticket.set_line(job_id, ended_line("done", "posted"))
        await self._ended(ticket, job_id, State.DELIVERED)
        return True

    async def _ended(self, ticket: Ticket, job_id: str, state: State) -> None:
        """Tell the jam a section ended (posted, failed or cancelled): its next one may start. A jam's error is
        logged, never the job's: the track is posted already."""
        if ticket.jam_id is None or self.on_section_end is None:
            return
        try:
            await self.on_section_end(ticket.jam_id, job_id, state)
        except Exception:
            log.exception("jam %s: could not take section job %s (%s)", ticket.jam_id, job_id, state.value)

    async def _journal(self, job_id: str, state: State, detail: str | None = None, **fields: object) -> None:
        try:
            await self.store.journal.move(job_id, state, detail, **fields)
        except Exception:
            log.exception("could not journal job %s as %s", job_id, state.value)

    async def _tell_if_gone(self, ticket: Ticket, text: str) -> None:
        """When the status message can no longer be edited, say it in the channel instead."""
        if not ticket.reply.token_usable(margin=5):
            await ticket.reply.tell(text)

    # -- status text ------------------------------------------------------------------------
    def _render(self, ticket: Ticket) -> str:
        positions, waits = self._snapshot()
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
            if rate is None:
                return None
            settings = self.engine.settings  # continuous: one row's pace, as estimate_waits_continuous assumes
            rows = settings.max_batch if settings.batching == "continuous" else 1
            return handle.request.duration * rows / rate
        elapsed = when - handle.started_at
        return max(0.0, elapsed * (1 - fraction) / fraction - (time.monotonic() - when))

    def waits(self) -> dict[str, tuple[float, float]] | None:
        """job id -> (seconds until it starts, seconds until it is done), from measured throughput."""
        return self._snapshot()[1]

    def _snapshot(self) -> tuple[dict[str, int], dict[str, tuple[float, float]] | None]:
        """Positions and waits, computed at most every ``SNAPSHOT_TTL`` s: each is a pass over the whole queue,
        and with hundreds of tickets rendering their status, recomputing per ticket is quadratic."""
        now = time.monotonic()
        if self._snapshot_at is None or now - self._snapshot_at[0] > SNAPSHOT_TTL:
            self._snapshot_at = (now, (self.engine.positions(), self._compute_waits()))
        return self._snapshot_at[1]

    def _compute_waits(self, queue: list[tuple[str, float]] | None = None) -> dict[str, tuple[float, float]] | None:
        """ETAs for the engine's batching: rows that free one by one (continuous), or closed batches (static).
        ``queue``: (job id, seconds) in start order; default, the engine's waiting jobs."""
        queue = self.engine.waiting() if queue is None else queue
        left = [self._left(job) or 0.0 for job in self.engine.jobs() if job.state is JobState.RUNNING]
        rate, max_batch = self.engine.throughput.rate, self.engine.settings.max_batch
        if self.engine.settings.batching == "continuous":
            return estimate_waits_continuous(queue, running=left, rate=rate, max_batch=max_batch)
        return estimate_waits(queue, running_remaining=max(left, default=0.0), rate=rate, max_batch=max_batch)

    def _long_track_note(self, requests: Sequence[JobRequest], tokens: int) -> str:
        """For a track over :data:`LONG_TRACK` seconds, the wait the user can expect (and what it is charged)."""
        duration = max(request.duration for request in requests)
        if duration <= LONG_TRACK:
            return ""
        queue = self.engine.waiting() + [(f"new-{index}", request.duration) for index, request in enumerate(requests)]
        waits = self._compute_waits(queue)
        if waits is None:
            when = "its wait is not known yet (no track has been timed)"
        else:
            when = f"expect it in about {format_seconds(max(waits[job_id][1] for job_id, _ in queue[-len(requests):]))}"
        return f"⏱ A {duration:g} s track takes a while: {when}. It counts as {tokens} against your request limit."

    # -- shutdown -----------------------------------------------------------------------------
    async def shutdown(self, grace: float) -> None:
        """Refuse new work; queued jobs keep their place (in the journal, or in Redis); the work under way gets
        ``grace`` s; every ticket's task is awaited."""
        self.accepting = False
        self.stopping = True
        await self.deployment.shutdown(grace, self._tasks)
        while self._tasks:  # including those started meanwhile
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- adopting (Redis) -----------------------------------------------------------------------
    async def _adopt(self, job_id: str, request: JobRequest, meta: str | None) -> JobHandle | None:
        """Follow a job another run of the bot admitted (on Redis): from this journal, else from the job's own
        record."""
        record = await self.store.journal.get(job_id)
        if record is not None and (record.state.done or record.state is State.DELIVERING):
            return None  # posted, or its kept audio is delivered by recovery
        if record is None:
            if meta is None:
                return None
            record = JobRecord.model_validate_json(meta, context={"stored": True})
            await self.store.journal.add([record])
            self._look_first.add(job_id)  # its first bot may have posted it before it stopped
        ticket = Ticket(reply_of(self.client, record), record.title, reserved=0, id=record.ticket_id,
                        jam_id=record.jam_id)
        ticket.handles.append(self.deployment.rejoin(job_id, request))
        self.follow(ticket)
        return ticket.handles[0]
