"""Audio in, on the bot's side: an attachment checked before download, fetched, and decoded into the data dir.

The decoding itself (FFmpeg in a subprocess, with its limits) is :mod:`generation.audio_in`. What a job gets
is a path to the WAV it made, in ``continue_from`` or ``melody_from``: in process the engine reads it, on Redis
the bot stores its bytes there for the worker (:mod:`generation.redis.inputs`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import discord

from bot.errors import UserError, reply_ephemeral, user_message
from bot.settings import BotSettings
from generation import audio_in
from generation.audio_in import AudioRefused, Limits, Mode, Prepared

log = logging.getLogger(__name__)

NO_AUDIO = f"That message has no audio file to use: it needs an {audio_in.KINDS} attachment."


def uploads_dir(data_dir: Path) -> Path:
    """Where prepared uploads are kept (until ``JAMGEN_RETENTION_DAYS`` after their last use)."""
    return data_dir / "uploads"


def limits_of(settings: BotSettings) -> Limits:
    return Limits(max_bytes=int(settings.upload_max_mb * 1_048_576), max_seconds=settings.upload_max_seconds)


def audio_attachment(message: discord.Message) -> discord.Attachment:
    """The message's first audio attachment; :class:`UserError` when it has none."""
    for attachment in message.attachments:
        if audio_in.is_audio_name(attachment.filename, attachment.content_type):
            return attachment
    raise UserError(NO_AUDIO)


def check(attachment: discord.Attachment, limits: Limits) -> None:
    """Refuse before download: the type, and the size Discord states."""
    audio_in.check_upload(attachment.filename, attachment.content_type, attachment.size, limits)


async def fetch(attachment: discord.Attachment, mode: Mode, model: str, folder: Path, limits: Limits) -> Prepared:
    """Download the attachment and decode the part a job uses (raises :class:`AudioRefused`)."""
    name = audio_in.display_name(attachment.filename)
    try:
        data = await attachment.read()
    except discord.HTTPException as exc:
        log.warning("could not download attachment %s (%s): %s", attachment.id, name, exc)
        raise AudioRefused(f"{name} couldn't be downloaded from Discord (it may have expired); attach it again.") \
            from exc
    return await audio_in.prepare(data, attachment.filename, mode, channels=audio_in.channels_for(model),
                                  folder=folder, limits=limits)


def input_fields(prepared: Prepared, asked: float) -> dict[str, Any]:
    """A request's fields for the prepared upload: a continuation adds seconds to the part it hears."""
    if prepared.mode is Mode.MELODY:
        return {"melody_from": str(prepared.path), "audio_note": prepared.describe()}
    added = audio_in.extension_seconds(asked)
    return {"continue_from": str(prepared.path), "duration": added, "audio_note": prepared.describe()}


def melody_model(models: list[str], chosen: str | None) -> str:
    """The model for ``mode: melody``: the one chosen if it follows melodies, else the first served that does."""
    if chosen is not None:
        if not audio_in.is_melody_model(chosen):
            raise UserError(f"{chosen} doesn't follow melodies: pick a melody model, or use mode: continue.")
        return chosen
    found = [model for model in models if audio_in.is_melody_model(model)]
    if not found:
        raise UserError(f"This bot serves no melody model ({', '.join(models)}), so a file can only be continued.")
    return found[0]


async def refuse_deferred(interaction: discord.Interaction, error: BaseException) -> None:
    """A refusal after the deferral: the "thinking…" message goes and the reason is said privately, as a refusal
    before the deferral is."""
    text = user_message(error)
    try:
        await interaction.delete_original_response()
    except discord.HTTPException:
        log.info("could not delete the deferred response of interaction %s", interaction.id, exc_info=True)
        try:
            await interaction.edit_original_response(content=f"❌ {text}"[:2000])
            return
        except discord.HTTPException:
            log.warning("could not edit the deferred response of interaction %s", interaction.id, exc_info=True)
    await reply_ephemeral(interaction, text)
