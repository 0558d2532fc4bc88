"""Posting a finished track: a follow-up on the interaction, or the channel once its token is gone."""

from __future__ import annotations

import asyncio
import datetime
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import discord

from bot.tickets import Ticket
from generation.encode import EncodedAudio

log = logging.getLogger(__name__)

# A follow-up needs the interaction token (15 min). Keep a margin for the upload itself.
TOKEN_MARGIN = datetime.timedelta(seconds=30)
_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Delivery:
    message_id: int
    via: str  # "followup" | "channel"


def file_name(prompt: str, seed: int, audio: EncodedAudio) -> str:
    slug = _SLUG.sub("-", prompt.lower()).strip("-")[:40] or "track"
    return f"{slug}-{seed}.{audio.extension}"


async def save_audio(directory: Path, job_id: str, audio: EncodedAudio) -> Path:
    """Keep the file for ⏩ Extend (and, later, redelivery)."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    path = directory / f"{job_id}.{audio.extension}"
    async with aiofiles.open(path, "wb") as out:
        await out.write(audio.data)
    return path


def token_usable(interaction: discord.Interaction) -> bool:
    return discord.utils.utcnow() + TOKEN_MARGIN < interaction.expires_at


def _is_token_gone(exc: discord.HTTPException) -> bool:
    # 401 Invalid Webhook Token (50027), 404 Unknown Webhook / interaction (10015 / 10062)
    return exc.status in (401, 404) or exc.code in (50027, 10015, 10062)


async def deliver(
    client: discord.Client,
    ticket: Ticket,
    audio: EncodedAudio,
    filename: str,
    embed: discord.Embed,
    view: discord.ui.View,
) -> Delivery:
    """Post ``audio`` for ``ticket``'s user. Pings only that user, never roles or everyone."""
    mentions = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(ticket.user_id)])
    content = f"<@{ticket.user_id}> your track is ready"
    if token_usable(ticket.interaction):
        try:
            sent = await ticket.interaction.followup.send(
                content, file=discord.File(io.BytesIO(audio.data), filename), embed=embed, view=view,
                allowed_mentions=mentions, wait=True,
            )
            return Delivery(sent.id, "followup")
        except discord.HTTPException as exc:
            if not _is_token_gone(exc):
                raise
            log.info("interaction token of ticket for user %s is gone; posting in the channel", ticket.user_id)
    channel = client.get_partial_messageable(ticket.channel_id, guild_id=ticket.guild_id)
    message = await channel.send(
        f"{content} (your request waited longer than Discord lets a reply wait, so it is posted here)",
        file=discord.File(io.BytesIO(audio.data), filename), embed=embed, view=view, allowed_mentions=mentions,
    )
    return Delivery(message.id, "channel")
