"""Checks every command shares: where it may run, and who may moderate."""

from __future__ import annotations

import discord

from bot.errors import NotHere
from bot.store import GuildSettings, Store


def allowed_here(interaction: discord.Interaction, store: Store) -> GuildSettings:
    """The guild's settings, or :class:`NotHere` with a pointer to the right channel."""
    if interaction.guild_id is None:
        raise NotHere("jamgen works in server channels, not in DMs. Use /generate in a server that has the bot.")
    settings = store.guild(interaction.guild_id)
    if not settings.allowed_channels:
        return settings
    channel = interaction.channel
    here = {interaction.channel_id, getattr(channel, "parent_id", None)}  # a thread counts as its channel
    if here.isdisjoint(settings.allowed_channels):
        where = ", ".join(f"<#{channel_id}>" for channel_id in settings.allowed_channels)
        raise NotHere(f"jamgen is set up to work in {where} on this server; please use it there.")
    return settings


def is_moderator(interaction: discord.Interaction) -> bool:
    """Manage Server in this guild, as Discord computed it for this interaction (server-side truth)."""
    return interaction.guild_id is not None and interaction.permissions.manage_guild
