"""Picking up after a restart or a crash: every unfinished job is resumed, none is posted twice.

* Jobs that had not been generated are queued again, in their original order (the fair
  queue then interleaves users as usual), and their status message says so.
* A job that was running when the process died counts a crash; after ``MAX_CRASHES`` it
  fails with a message instead of taking the bot down again.
* Jobs whose audio was kept on disk are delivered from it. A job journaled as
  "delivering" may have been posted just before the crash: the channel's recent
  messages are checked for its job id (every result card says ``job <id>`` in its
  footer; :func:`bot.delivery.find_post`) before it is posted again. That is the at-most-once guarantee: a post is
  either found or made, never made twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import aiofiles
import discord

from bot.journal import JobRecord, State
from bot.reply import Reply
from bot.takes import Takes
from bot.tickets import Ticket, Timing, ended_line
from generation.encode import EncodedAudio, probe

if TYPE_CHECKING:
    from bot.pipeline import Pipeline
    from bot.store import Store

log = logging.getLogger(__name__)

MAX_CRASHES = 2
RESTARTED = "🔄 The bot restarted; your job is back in the queue."


async def recover(pipeline: Pipeline) -> int:
    """Resume every unfinished job in the journal; returns how many there were."""
    records = await pipeline.store.journal.unfinished()
    for ticket_records in _by_ticket(records).values():
        await _resume(pipeline, ticket_records)
    if records:
        log.info("resumed %d unfinished jobs from the journal", len(records))
    return len(records)


def _by_ticket(records: Iterable[JobRecord]) -> dict[str, list[JobRecord]]:
    tickets: dict[str, list[JobRecord]] = {}
    for record in records:
        tickets.setdefault(record.ticket_id, []).append(record)
    return tickets


def reply_of(client: discord.Client, record: JobRecord) -> Reply:
    """Where a journaled job's messages go."""
    return Reply(
        client, record.application_id or 0, record.token or "", record.interaction_at or record.created_at,
        record.user_id, record.guild_id, record.channel_id, record.status_message_id,
        followups=record.jam_id is None,
    )


async def _resume(pipeline: Pipeline, records: list[JobRecord]) -> None:
    first = records[0]
    ticket = Ticket(reply_of(pipeline.client, first), first.title, reserved=0, id=first.ticket_id, jam_id=first.jam_id)
    ticket.takes = Takes.of_records(records)  # takes kept on disk are posted with those still to make
    kept: list[JobRecord] = []
    for record in records:
        if await _is_kept(record.audio_path):
            kept.append(record)
        elif pipeline.deployment.jobs_outlive_bot or await _may_run_again(pipeline, ticket, record):
            ticket.handles.append(pipeline.deployment.rejoin(record.job_id, record.request))  # Redis: still there
    if ticket.handles:
        ticket.note = RESTARTED
    pipeline.follow(ticket, kept)


async def _is_kept(path: str | None) -> bool:
    if path is None:
        return False
    exists: bool = await asyncio.to_thread(os.path.isfile, path)
    return exists


async def _may_run_again(pipeline: Pipeline, ticket: Ticket, record: JobRecord) -> bool:
    """A job that was running when the bot died may be what killed it: give it ``MAX_CRASHES`` chances."""
    if record.state is State.QUEUED:
        return True
    crashes = await pipeline.store.journal.count_attempt(record.job_id)
    if crashes < MAX_CRASHES:
        return True
    reason = f"The bot stopped {crashes} times while making this track, so it was dropped. Try another prompt."
    await pipeline.store.journal.move(record.job_id, State.FAILED, reason=reason)
    ticket.set_line(record.job_id, ended_line("failed", reason))
    await ticket.reply.tell(f"your track `{record.job_id}` failed: {reason}")
    return False


async def kept_audio(record: JobRecord) -> EncodedAudio:
    assert record.audio_path is not None
    async with aiofiles.open(record.audio_path, "rb") as source:
        data = await source.read()
    return await asyncio.to_thread(probe, data, record.request.format)


async def timing_of(store: Store, record: JobRecord) -> Timing:
    """Time queued and time generating, from the journal's events."""
    events = await store.journal.events(record.job_id)
    first = {state: at for state, at, _ in reversed(events)}
    started = first.get(State.RUNNING.value, record.created_at)
    generated = first.get(State.DELIVERING.value, first.get(State.ENCODING.value, started))
    return Timing(max(0.0, started - record.created_at), max(0.0, generated - started))
