"""The bot's errors, and the one boundary that turns any of them into a short reply.

Anything raised by a command, a button or the job pipeline ends up in :func:`report`:
* a :class:`UserError` (or a generation error meant for people) is shown as it is;
* anything else is logged with its traceback under a short error id, and the user
  sees only that id. No traceback ever reaches Discord.
"""

from __future__ import annotations

import errno
import logging
import secrets

import discord
from discord import app_commands

from bot.ui.text import safe
from generation.errors import GenerationError

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A setting is missing or wrong; the message says what to do."""


class UserError(Exception):
    """Shown to the user as it is, ephemerally: bad input, a refusal, a missing permission."""


class NotHere(UserError):
    """The command was used outside the guild's allowed channels (or in DMs)."""


def new_error_id() -> str:
    return secrets.token_hex(4)


def _unwrap(error: BaseException) -> BaseException:
    while isinstance(error, app_commands.CommandInvokeError | app_commands.TransformerError) and error.__cause__:
        error = error.__cause__
    return error


STALE_COMMAND = "That command isn't available (the bot may have just been updated); try again in a minute."


UNKNOWN_CHANNEL = 10003  # Discord's error code for a deleted (or never seen) channel or thread


def user_message(error: BaseException) -> str:
    """What the user reads for ``error``. Unexpected errors are logged here, with their id."""
    if isinstance(error, app_commands.TransformerError) and not isinstance(error.__cause__, UserError):
        log.info("option value refused: %s", error, exc_info=error.__cause__)
        return bad_option(error)
    error = _unwrap(error)
    if isinstance(error, UserError | GenerationError):
        return str(error)
    if isinstance(error, app_commands.CommandNotFound | app_commands.CommandSignatureMismatch):
        log.info("stale command from a client: %s", error)  # Discord's copy of the commands is out of date
        return STALE_COMMAND
    if isinstance(error, app_commands.MissingPermissions):
        return "You need the Manage Server permission for that."
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command works in a server channel, not in DMs."
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.CheckFailure):
        return "You can't use this command here."
    if isinstance(error, discord.NotFound) and error.code == UNKNOWN_CHANNEL:
        log.info("the channel to post in is gone: %s", error)
        return "The channel or thread to post in was deleted, so the track could not be posted there."
    error_id = new_error_id()
    log.error("unexpected error [error %s]", error_id, exc_info=error)
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return f"The bot's disk is full, so your track could not be kept (error id `{error_id}`). Tell the admins."
    return f"Something went wrong on our side (error id `{error_id}`). The admins can find it in the log."


def bad_option(error: app_commands.TransformerError) -> str:
    """An option value discord.py could not convert: a client that ignores the declared types or choices."""
    value = safe(str(error.value), 40)
    choices = getattr(error.transformer, "choices", None)
    if choices:
        expected = "one of " + ", ".join(safe(str(choice.value), 40) for choice in choices[:25])
    else:
        expected = "a " + error.type.name.replace("_", " ")
    return f'The value "{value}" doesn\'t fit that option (expected {expected}). Pick it from the list and try again.'


async def reply_ephemeral(interaction: discord.Interaction, text: str) -> None:
    """Answer ``interaction`` privately, whether or not it was already acknowledged.

    An autocomplete request can only be answered with choices: it gets none.
    """
    text = text[:1900]
    mentions = discord.AllowedMentions.none()
    try:
        if interaction.type is discord.InteractionType.autocomplete:
            if not interaction.response.is_done():
                await interaction.response.autocomplete([])
        elif interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=mentions)
        else:
            await interaction.response.send_message(text, ephemeral=True, allowed_mentions=mentions)
    except discord.HTTPException:
        log.warning("could not tell user %s about an error", interaction.user.id, exc_info=True)


async def report(interaction: discord.Interaction, error: BaseException) -> None:
    """The boundary: a short ephemeral message for the user, the traceback (with an id) for the log."""
    await reply_ephemeral(interaction, user_message(error))
