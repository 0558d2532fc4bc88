"""Running jams: sections one after another through the usual pipeline, each continuing the jam's tail.

* A section is a job like any other: it waits in the fair queue and counts against its author's limits. Only the
  first waiting section of a jam runs; the others wait in the jam (``/queue`` lists them) because each continues
  the codes of the one before.
* When a section is posted (:meth:`JamService.section_ended`, called by the pipeline), its file and its new codes
  go into the jam's store, the whole track is spliced again and the track message in the thread is edited in
  place; then the next waiting section starts.
* Everything is saved before it is acted on, so a restart finds each jam as it was: :meth:`JamService.resume`
  takes over sections whose jobs ended while the bot was down, and starts those that never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiofiles
import discord
from redis.exceptions import RedisError

from bot.delivery import codes_path
from bot.errors import UserError, user_message
from bot.jam import render
from bot.jam.model import CONTEXT_SECONDS, Jam, JamState, Section, Waiting, check_add, check_may_change
from bot.jam.store import JamStore, blob_name, section_blob
from bot.jam.thread import JamThread
from bot.journal import JobRecord, State
from bot.pipeline import Asker
from bot.reply import TOKEN_LIFETIME, Reply
from bot.ui.text import safe
from generation.encode import probe
from generation.jobs import JobRequest
from generation.splice import codes_bytes, codes_of, tail

if TYPE_CHECKING:
    from bot.app import JamBot

log = logging.getLogger(__name__)

# the command's answer before its section is queued, given whether it waits its turn; it may return a line for the
# section's status message
Ready = Callable[[bool], Awaitable[str | None]]


class JamService:
    def __init__(self, bot: JamBot, store: JamStore) -> None:
        self.bot = bot
        self.store = store
        self._jams: dict[str, Jam] = {}  # open jams, and those closed while this process ran
        self._locks: dict[str, asyncio.Lock] = {}
        self._starting: set[int] = set()  # channels where a jam is being opened
        self.folder = bot.engine.settings.data_dir / "jams"  # the codes each section continues (job inputs)
        self.thread = JamThread(bot, store, self.keep)  # what the jam shows in its thread

    # -- lookups -----------------------------------------------------------------------------------------
    async def load(self) -> bool:
        """Read the open jams; False when their store (Redis) is unreachable (logged; try again later)."""
        try:
            jams = await self.store.open_jams()
        except RedisError as exc:
            log.warning("jams: Redis is unreachable (%s); /jam waits for it", exc)
            return False
        for jam in jams:
            self._jams.setdefault(jam.id, jam)
        return True

    def open_in(self, channel_id: int) -> Jam | None:
        """The open jam started in this channel or posting in this thread."""
        return next((jam for jam in self._jams.values() if jam.state is JamState.OPEN
                     and channel_id in (jam.channel_id, jam.thread_id)), None)

    async def live_in(self, channel_id: int) -> Jam | None:
        """:meth:`open_in`, after closing that jam if its thread is gone (deleted while the bot was away, or its
        THREAD_DELETE is not handled yet)."""
        jam = self.open_in(channel_id)
        if jam is not None and await self.thread.gone(jam):
            await self.thread_deleted(jam.thread_id)
            jam = self.open_in(channel_id)
        return jam

    def here(self, channel_id: int) -> Jam:
        """The jam a command used here is about: the open one, else the last one of this thread."""
        jam = self.open_in(channel_id) or next(
            (jam for jam in reversed(self._jams.values()) if jam.thread_id == channel_id), None)
        if jam is None:
            raise UserError("There is no jam here. Start one with `/jam start` (or 🎶 under a track).")
        return jam

    def open_jams(self) -> list[Jam]:
        return [jam for jam in self._jams.values() if jam.state is JamState.OPEN]

    def waiting_of(self, guild_id: int | None, user_id: int) -> Iterator[tuple[Jam, Waiting]]:
        """The user's sections that wait for the one before them (not yet jobs), for /queue."""
        for jam in self.open_jams():
            if jam.guild_id == guild_id:
                yield from ((jam, item) for item in jam.waiting if item.author_id == user_id and item.job_id is None)

    @contextlib.asynccontextmanager
    async def locked(self, jam: Jam) -> AsyncIterator[Jam]:
        """The jam (its latest copy), held for one change at a time."""
        async with self._locks.setdefault(jam.id, asyncio.Lock()):
            yield self._jams.get(jam.id, jam)

    async def keep(self, jam: Jam) -> None:
        self._jams[jam.id] = jam
        await self.store.save(jam)

    # -- sections ----------------------------------------------------------------------------------------
    async def begin(self, jam: Jam, item: Waiting, reply: Reply, ready: Ready) -> None:
        """A new jam's first section: admitted (a refusal is instant and nothing is kept), then ``ready`` (the
        command defers and opens the thread), then the jam is saved and the section queued."""
        if await self.live_in(jam.channel_id) is not None or jam.channel_id in self._starting:
            raise UserError("A jam is already on in this channel: join it with `/jam add`.")
        self._starting.add(jam.channel_id)
        try:
            async with self.locked(jam) as jam:
                jam.waiting.append(item)
                await self._launch(jam, item, reply, ready)
        finally:
            self._starting.discard(jam.channel_id)

    async def add(self, jam: Jam, item: Waiting, caps: tuple[int, int], reply: Reply, ready: Ready) -> None:
        """Add a section. When none runs it starts now (a refusal is instant); else it waits its turn, and
        ``ready(True)`` tells its author so (``ready(False)``: it starts now)."""
        async with self.locked(jam) as jam:
            check_add(jam, item.seconds, *caps)
            if jam.waiting:
                jam.waiting.append(item)
                try:
                    await ready(True)
                except BaseException:
                    jam.waiting.remove(item)
                    raise
                jam.active_at = time.time()
                await self.keep(jam)
                return
            jam.waiting.append(item)
            try:
                await self._launch(jam, item, reply, ready)
            except BaseException:
                if any(waiting is item for waiting in jam.waiting):
                    jam.waiting.remove(item)
                raise

    async def _start_next(self, jam: Jam) -> None:
        """Start the first waiting section; one that is refused (its author's limits) is dropped, said why."""
        while jam.state is JamState.OPEN and jam.waiting and jam.waiting[0].job_id is None:
            item = jam.waiting[0]
            try:
                await self._launch(jam, item, self._reply_for(jam, item))
                return
            except Exception as exc:
                reason = user_message(exc)
                if jam.waiting and jam.waiting[0] is item:
                    jam.waiting.pop(0)
                await self.keep(jam)
                text = f"<@{item.author_id}> your section ({safe(item.prompt, 80)}) could not start: {reason}"
                await self.thread.say(jam, text, item.author_id)

    async def _launch(self, jam: Jam, item: Waiting, reply: Reply, ready: Ready | None = None) -> None:
        number = len(jam.sections) + 1
        request = await self._request(jam, item, number)
        pipeline = self.bot.pipeline
        ticket = await pipeline.admit(Asker(item.author_id, jam.guild_id, frozenset(item.role_ids)), [request],
                                      render.section_title(jam, number, item.prompt, item.seconds), reply,
                                      jam_id=jam.id)
        if ready is not None:
            try:
                ticket.note = await ready(False) or ticket.note
            except BaseException:
                pipeline.release(ticket, refund=True)
                raise
        item.job_id = ticket.job_ids[0]
        await self.keep(jam)  # before the job exists: its end finds it
        if not await pipeline.launch(ticket, [request]):  # its user was told why
            jam.waiting.remove(item)
            await self.keep(jam)
            raise UserError("The section could not be queued (the bot could not record it).")

    async def _request(self, jam: Jam, item: Waiting, number: int) -> JobRequest:
        fields: dict[str, object] = {}
        if jam.sections:
            assert jam.frame_rate is not None
            frames = round(CONTEXT_SECONDS * jam.frame_rate)
            codes = [codes_of(await section_blob(self.store, jam.id, section.number, "codes"))
                     for section in last_sections(jam, frames)]
            context = tail(codes, frames)
            item.context_frames = int(context.shape[1])
            path = self.folder / f"{jam.id}-{number}.npy"
            await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
            async with aiofiles.open(path, "wb") as out:
                await out.write(codes_bytes(context))
            fields["continue_codes"] = str(path)
        fields |= {"prompt": item.prompt, "duration": item.seconds, "model": jam.model, "format": jam.format,
                   "max_file_bytes": jam.max_file_bytes, "owner": str(item.author_id), "keep_codes": True}
        return JobRequest.create(max_duration=self.bot.pipeline.duration_cap, **(fields | item.inputs))

    def _reply_for(self, jam: Jam, item: Waiting) -> Reply:
        """Where a section that waited posts: the jam's thread; its /jam add message shows progress while the
        interaction's token lives."""
        return Reply(self.bot, item.application_id or 0, item.token or "",
                     item.interaction_at or time.time() - TOKEN_LIFETIME, item.author_id, jam.guild_id, jam.thread_id,
                     item.status_message_id, followups=False)

    async def section_ended(self, jam_id: str, job_id: str, state: State) -> None:
        """The pipeline's call when a section's job ended: posted (the jam takes it), failed or cancelled."""
        jam = self._jams.get(jam_id) or await self.store.get(jam_id)
        if jam is None:
            log.warning("job %s ended for jam %s, which is gone", job_id, jam_id)
            return
        async with self.locked(jam) as jam:
            running = jam.running
            if running is None or running.job_id != job_id:
                return  # taken already (a restart), or dropped by /jam end
            if state is not State.DELIVERED and await self.thread.gone(jam):
                await self._orphaned(jam)
                return
            yours = f"<@{running.author_id}> your section ({safe(running.prompt, 80)}) was"
            if state is State.DELIVERED:
                try:
                    await self._take(jam, running, job_id)
                except Exception as exc:  # the jam goes on without it: its author is told why
                    await self.thread.say(jam, f"{yours} posted but could not join the jam: {user_message(exc)}",
                                          running.author_id)
            else:
                await self.thread.say(jam, f"{yours} {state.value}; the jam goes on from section {len(jam.sections)}.",
                                      running.author_id)
            jam.waiting.pop(0)
            jam.active_at = time.time()
            await self.keep(jam)
            await self.thread.refresh(jam)
            await self._start_next(jam)

    async def _take(self, jam: Jam, item: Waiting, job_id: str) -> None:
        record = await self.bot.store.journal.get(job_id)
        if record is None or record.audio_path is None:
            raise RuntimeError(f"job {job_id} was posted but its audio is not kept")
        data, codes = await kept_track(Path(record.audio_path))
        await self.add_section(jam, record, data, codes, context_frames=item.context_frames)
        if record.request.continue_codes is not None:  # the job's input: no longer needed
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(Path(record.request.continue_codes).unlink)

    async def add_section(self, jam: Jam, record: JobRecord, data: bytes, codes: bytes, context_frames: int) -> None:
        """Keep a posted track as the jam's next section: its file, and its codes after the context."""
        all_codes = codes_of(codes)
        if jam.frame_rate is None:
            audio = await asyncio.to_thread(probe, data, record.request.format)
            jam.frame_rate = round(all_codes.shape[1] / audio.duration)
        number = len(jam.sections) + 1
        await self.store.put_blob(jam.id, blob_name(number, "audio"), data)
        await self.store.put_blob(jam.id, blob_name(number, "codes"), codes_bytes(all_codes[:, context_frames:]))
        jam.sections.append(Section(
            number=number, author_id=record.user_id, prompt=record.request.prompt,
            seconds=(all_codes.shape[1] - context_frames) / jam.frame_rate, job_id=record.job_id,
            context_seconds=context_frames / jam.frame_rate, message_id=record.message_id,
        ))

    # -- undo and end --------------------------------------------------------------------------------------
    async def undo(self, jam: Jam, by: int, moderator: bool) -> str:
        """Drop the jam's last section: a waiting one, else the last posted (never the first)."""
        async with self.locked(jam) as jam:
            if jam.waiting and jam.waiting[-1].job_id is None:
                item = jam.waiting[-1]
                check_may_change(jam, by, moderator, item.author_id, "undo that section")
                jam.waiting.pop()
                await self.keep(jam)
                await self._drop_notice(jam, item, f"↩️ Dropped from the jam by <@{by}> before it started.")
                return f"Dropped the waiting section {safe(item.prompt, 80)}."
            if jam.waiting:
                raise UserError("The last section is being made right now: undo it once it is posted "
                                "(or stop it with /cancel).")
            if len(jam.sections) < 2:
                raise UserError("A jam keeps its first section. `/jam end` it to stop.")
            section = jam.sections[-1]
            check_may_change(jam, by, moderator, section.author_id, "undo that section")
            jam.sections.pop()
            jam.active_at = time.time()
            await self.keep(jam)
            await self.thread.strike(jam, section, by)
            await self.thread.refresh(jam)
            return f"Dropped section {section.number} ({safe(section.prompt, 80)}). The jam is {jam.seconds:.1f} s."

    async def end(self, jam: Jam, reason: str) -> None:
        """Close the jam: its running section is cancelled, waiting ones dropped; the final track is posted in
        its thread, and the thread archived."""
        async with self.locked(jam) as jam:
            if jam.state is not JamState.OPEN:
                raise UserError("This jam has ended already.")
            running, dropped = await self._close(jam, reason, "🏁 The jam ended before this section started, "
                                                               "so it was not made.")
        if running is not None and running.job_id is not None:
            self.bot.pipeline.engine.cancel(running.job_id, "the jam ended")
        await self.thread.post_final(jam, reason, dropped)

    async def _close(self, jam: Jam, reason: str, notice: str) -> tuple[Waiting | None, list[Waiting]]:
        """Mark the jam closed (the lock is held) and tell the sections that had not started ``notice``; returns
        the running section and those dropped."""
        running, dropped = jam.running, [item for item in jam.waiting if item.job_id is None]
        jam.state, jam.closed_reason, jam.waiting = JamState.CLOSED, reason, []
        await self.keep(jam)
        for item in dropped:
            await self._drop_notice(jam, item, notice)
        return running, dropped

    async def _drop_notice(self, jam: Jam, item: Waiting, text: str) -> None:
        """Say on a waiting section's own message (its /jam add answer) that it will not be made."""
        if item.status_message_id is None:
            return
        try:
            await self._reply_for(jam, item).edit_status(text)
        except discord.HTTPException:  # its token has expired: the jam's final post names it
            log.info("jam %s: could not update the message of a dropped section", jam.id)

    async def _orphaned(self, jam: Jam) -> None:
        """Close a jam whose thread is gone (the lock is held): nothing more can be posted there, so its
        running section is cancelled too."""
        log.info("jam %s: its thread %s was deleted; closing it", jam.id, jam.thread_id)
        running, _ = await self._close(jam, "its thread was deleted",
                                       "🏁 The jam's thread was deleted, so this section was not made.")
        if running is not None and running.job_id is not None:
            self.bot.pipeline.engine.cancel(running.job_id, "the jam's thread was deleted")

    async def thread_deleted(self, thread_id: int) -> None:
        """A thread was deleted (THREAD_DELETE, or found gone): the open jam posting there closes."""
        jam = self.open_in(thread_id)
        if jam is None or jam.thread_id != thread_id or jam.thread_id == jam.channel_id:
            return
        async with self.locked(jam) as jam:
            if jam.state is JamState.OPEN:
                await self._orphaned(jam)

    async def close_idle(self, hours: float, now: float | None = None) -> int:
        """End every open jam idle for ``hours``; returns how many."""
        now = time.time() if now is None else now
        idle = [jam for jam in self.open_jams() if jam.idle_since(now, hours)]
        for jam in idle:
            with contextlib.suppress(UserError):
                await self.end(jam, f"nothing new for {hours:g} h")
        return len(idle)

    # -- after a restart -----------------------------------------------------------------------------------
    async def resume(self) -> None:
        """Take over what happened while the bot was down (after the journal's recovery)."""
        for jam in self.open_jams():
            try:
                await self._resume(jam)
            except Exception:
                log.exception("jam %s: could not resume it", jam.id)

    async def _resume(self, jam: Jam) -> None:
        running = jam.running
        if running is None:
            async with self.locked(jam) as jam:
                await self._start_next(jam)
            return
        assert running.job_id is not None
        record = await self.bot.store.journal.get(running.job_id)
        if record is not None and record.state.done:
            await self.section_ended(jam.id, running.job_id, record.state)


def last_sections(jam: Jam, frames: int) -> list[Section]:
    """The fewest last sections whose codes hold ``frames`` frames (all of them when the jam is shorter)."""
    assert jam.frame_rate is not None
    held = 0
    for index in range(len(jam.sections) - 1, -1, -1):
        held += round(jam.sections[index].seconds * jam.frame_rate)
        if held >= frames:
            return jam.sections[index:]
    return jam.sections


async def kept_track(audio_path: Path) -> tuple[bytes, bytes]:
    """A posted track's file and codes, as the pipeline kept them."""
    async with aiofiles.open(audio_path, "rb") as source:
        data = await source.read()
    try:
        async with aiofiles.open(codes_path(audio_path), "rb") as source:
            codes = await source.read()
    except FileNotFoundError:
        raise UserError("That track's codes were not kept (it was made before jams), so a jam can't continue it. "
                        "Start one with `/jam start`.") from None
    return data, codes

