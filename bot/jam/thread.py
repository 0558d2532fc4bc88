"""What a jam shows in its thread: the whole track (its sections spliced and encoded) in one message edited in
place, notices to section authors, undone sections struck through, and the final post before the thread is archived.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord

from bot.delivery import slug
from bot.jam import render
from bot.jam.model import Jam, Section, Waiting
from bot.jam.store import JamStore, section_blob
from bot.reply import only_user
from bot.ui.text import safe
from generation.encode import EncodedAudio
from generation.errors import EncodeError
from generation.jobs import OutputFormat
from generation.splice import Part, encode_segment, splice

if TYPE_CHECKING:
    from bot.app import JamBot

log = logging.getLogger(__name__)


class JamThread:
    """A jam's thread, for :class:`~bot.jam.service.JamService`; ``keep`` saves a jam (its track message id)."""

    def __init__(self, bot: JamBot, store: JamStore, keep: Callable[[Jam], Awaitable[None]]) -> None:
        self.bot = bot
        self.store = store
        self.keep = keep

    async def track(self, jam: Jam, max_bytes: int | None) -> EncodedAudio:
        """Every section spliced at its context boundary (50 ms crossfade), encoded under ``max_bytes``."""
        parts = [Part(await section_blob(self.store, jam.id, section.number, "audio"), section.context_seconds)
                 for section in jam.sections]
        segment = await asyncio.to_thread(splice, parts)
        return await asyncio.to_thread(encode_segment, segment, OutputFormat(jam.format), max_bytes)

    def track_file(self, jam: Jam, audio: EncodedAudio) -> discord.File:
        return discord.File(io.BytesIO(audio.data), filename=f"{slug(jam.title, 'jam')}-jam{audio.extension}")

    async def files(self, jam: Jam) -> tuple[list[discord.File], str]:
        """The whole track as the file to post (none for a jam without sections), or no file and why (it cannot
        fit the upload limit)."""
        if not jam.sections:
            return [], ""
        try:
            return [self.track_file(jam, await self.track(jam, jam.max_file_bytes))], ""
        except EncodeError as exc:
            return [], str(exc)

    async def post_track(self, jam: Jam) -> None:
        """The thread's track message (the card and the whole track), edited in place."""
        if not jam.sections:
            return
        content = f"🎶 The whole track so far: {len(jam.sections)} sections, {jam.seconds:.1f} s"
        embed = render.card(jam)
        files, why = await self.files(jam)
        if why:
            content = f"{content}. {why}"
        channel = self.channel(jam)
        if jam.track_message_id is not None:
            try:
                await channel.get_partial_message(jam.track_message_id).edit(
                    content=content, embed=embed, attachments=files, allowed_mentions=discord.AllowedMentions.none())
                return
            except discord.NotFound:
                log.info("jam %s: its track message is gone; posting a new one", jam.id)
        message = await channel.send(content, embed=embed, files=files, allowed_mentions=discord.AllowedMentions.none())
        jam.track_message_id = message.id
        await self.keep(jam)

    async def refresh(self, jam: Jam) -> None:
        """:meth:`post_track`, whose failure is logged: the jam goes on (the next post tries again)."""
        try:
            await self.post_track(jam)
        except Exception:
            log.exception("jam %s: could not update its track message", jam.id)

    def channel(self, jam: Jam) -> discord.PartialMessageable:
        return self.bot.get_partial_messageable(jam.thread_id, guild_id=jam.guild_id)

    async def say(self, jam: Jam, text: str, user_id: int | None = None) -> None:
        mentions = only_user(user_id) if user_id is not None else discord.AllowedMentions.none()
        try:
            await self.channel(jam).send(text[:2000], allowed_mentions=mentions)
        except discord.HTTPException:
            log.warning("jam %s: could not post in its thread %s", jam.id, jam.thread_id, exc_info=True)

    async def strike(self, jam: Jam, section: Section, by: int) -> None:
        if section.message_id is None:
            return
        with contextlib.suppress(discord.HTTPException):
            await self.channel(jam).get_partial_message(section.message_id).edit(
                content=f"↩️ Section {section.number} was undone by <@{by}>.",
                allowed_mentions=discord.AllowedMentions.none())

    async def post_final(self, jam: Jam, reason: str, dropped: list[Waiting]) -> None:
        files, why = await self.files(jam)
        note = f" {why}" if why else ""
        text = (f"🏁 This jam has ended ({reason}). The final track, {jam.seconds:.1f} s, {render.credits(jam)}.{note}"
                if jam.sections else f"🏁 This jam has ended ({reason}) before any section was made.")
        text += "".join(f"\n↩️ Not made: <@{item.author_id}>'s {safe(item.prompt, 60)}" for item in dropped)
        try:
            await self.channel(jam).send(text[:2000], embed=render.card(jam), files=files,
                                        allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException:
            log.warning("jam %s: could not post its final track", jam.id, exc_info=True)
        await self.archive(jam)

    async def archive(self, jam: Jam) -> None:
        if jam.thread_id == jam.channel_id:
            return
        try:
            await self.bot.http.edit_channel(jam.thread_id, archived=True)
        except discord.HTTPException as exc:
            log.info("jam %s: could not archive thread %s (%s)", jam.id, jam.thread_id, exc.status)

    async def gone(self, jam: Jam) -> bool:
        """Whether the jam's thread was deleted (asked only when a section failed: its post may be why)."""
        if jam.thread_id == jam.channel_id:
            return False
        try:
            await self.bot.fetch_channel(jam.thread_id)
        except discord.NotFound:
            return True
        except discord.HTTPException:
            return False
        return False
