"""Checks every command shares: where it may run, and who may moderate."""

from __future__ import annotations

import discord

from bot.errors import NotHere
from bot.store import GuildSettings, Store


def allowed_here(interaction: discord.Interaction, store: Store) -> GuildSettings:
    """The guild's settings, or :class:`NotHere` with a pointer to the right channel."""
    if interaction.guild_id is None:
        raise NotHere("jamgen works in server channels, not in DMs. Use /generate in a server that has the bot.")
    can_post_here(interaction)
    settings = store.guild(interaction.guild_id)
    if not settings.allowed_channels:
        return settings
    channel = interaction.channel
    here = {interaction.channel_id, getattr(channel, "parent_id", None)}  # a thread counts as its channel
    if here.isdisjoint(settings.allowed_channels):
        where = ", ".join(f"<#{channel_id}>" for channel_id in settings.allowed_channels)
        raise NotHere(f"jamgen is set up to work in {where} on this server; please use it there.")
    return settings


CANT_POST = (
    "I can't post tracks in this channel: I need the Attach Files, Embed Links and Send Messages permissions here."
    " Ask an admin."
)


def can_post_here(interaction: discord.Interaction) -> None:
    """Refuse before any work starts if the bot could not post the result (a file and a card) here.

    ``app_permissions`` is what Discord computed for the bot in this very channel (overwrites included).
    Follow-ups need Attach Files and Embed Links; the channel post after 15 min needs Send Messages too.
    """
    granted = interaction.app_permissions
    in_thread = isinstance(interaction.channel, discord.Thread)
    send = granted.send_messages_in_threads if in_thread else granted.send_messages
    if not (granted.attach_files and granted.embed_links and send):
        raise NotHere(CANT_POST)


def is_moderator(interaction: discord.Interaction) -> bool:
    """Manage Server in this guild, as Discord computed it for this interaction (server-side truth)."""
    return interaction.guild_id is not None and interaction.permissions.manage_guild
