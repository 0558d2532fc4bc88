"""/jamgen settings …: per-guild settings, for members with Manage Server (checked server-side)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import is_moderator
from bot.errors import UserError
from bot.options import cap_option
from bot.store import JAM_MAX_SECONDS, JAM_MAX_SECTIONS, GuildSettings
from bot.ui.text import format_seconds
from generation.jobs import OutputFormat
from generation.settings import MAX_DURATION_CAP

if TYPE_CHECKING:
    from bot.app import JamBot

TextChannel = discord.TextChannel | discord.Thread | discord.VoiceChannel


class Settings(app_commands.Group):
    """Hidden from members without Manage Server by default_permissions; enforced by interaction_check."""

    def __init__(self, bot: JamBot) -> None:
        super().__init__(name="settings", description="Server settings for jamgen (Manage Server)")
        self.bot = bot
        cap_option(self.max_duration, "seconds", bot.pipeline.duration_cap)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage()
        if not is_moderator(interaction):
            raise app_commands.MissingPermissions(["manage_guild"])
        return True

    async def _save(self, interaction: discord.Interaction, **changes: Any) -> None:
        assert interaction.guild_id is not None  # interaction_check
        settings = await self.bot.store.update_guild(interaction.guild_id, **changes)
        await interaction.response.send_message(
            "Saved.\n" + self.describe(settings), ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    def describe(self, guild: GuildSettings) -> str:
        limits = self.bot.pipeline.limits(guild)
        channels = ", ".join(f"<#{c}>" for c in guild.allowed_channels) or "every channel"
        exempt = f"<@&{guild.exempt_role_id}>" if guild.exempt_role_id else "none"
        fmt = (guild.default_format or self.bot.settings.default_format).value
        return (
            f"**Channels:** {channels}\n"
            f"**Max duration:** {self.bot.pipeline.max_duration(guild)} s\n"
            f"**Per person:** {limits.max_active} jobs at once, {limits.rate_count} requests per "
            f"{format_seconds(limits.rate_window)}\n"
            f"**Exempt role:** {exempt}\n**Default format:** {fmt}\n"
            f"**Jams:** at most {guild.jam_max_seconds} s and {guild.jam_max_sections} sections each"
        )

    @app_commands.command(name="show", description="Show this server's jamgen settings")
    async def show(self, interaction: discord.Interaction) -> None:
        text = self.describe(self.bot.store.guild(interaction.guild_id))
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="allow-channel", description="Let jamgen work in this channel (default: everywhere)")
    async def allow_channel(self, interaction: discord.Interaction, channel: TextChannel) -> None:
        current = self.bot.store.guild(interaction.guild_id).allowed_channels
        await self._save(interaction, allowed_channels=tuple(dict.fromkeys((*current, channel.id))))

    @app_commands.command(name="disallow-channel", description="Stop jamgen working in this channel")
    async def disallow_channel(self, interaction: discord.Interaction, channel: TextChannel) -> None:
        current = self.bot.store.guild(interaction.guild_id).allowed_channels
        await self._save(interaction, allowed_channels=tuple(c for c in current if c != channel.id))

    @app_commands.command(name="all-channels", description="Let jamgen work in every channel again")
    async def all_channels(self, interaction: discord.Interaction) -> None:
        await self._save(interaction, allowed_channels=())

    @app_commands.command(name="max-duration", description="Longest track members may ask for, in seconds")
    async def max_duration(
        self, interaction: discord.Interaction, seconds: app_commands.Range[int, 1, int(MAX_DURATION_CAP)]
    ) -> None:
        cap = self.bot.pipeline.duration_cap
        if seconds > cap:  # the declared range is only a hint to well-behaved clients
            raise UserError(f"This bot's tracks can be at most {cap} s long (its JAMGEN_MAX_DURATION).")
        await self._save(interaction, max_duration=seconds)

    @app_commands.command(name="limits", description="Per-person limits (leave an option out to keep it)")
    @app_commands.describe(
        max_jobs="Requests one person may have queued or running at once",
        requests="Requests one person may make per window",
        window_minutes="The window, in minutes",
    )
    async def limits(
        self,
        interaction: discord.Interaction,
        max_jobs: app_commands.Range[int, 1, 50] | None = None,
        requests: app_commands.Range[int, 1, 1000] | None = None,
        window_minutes: app_commands.Range[int, 1, 1440] | None = None,
    ) -> None:
        changes: dict[str, Any] = {"max_jobs": max_jobs, "rate_count": requests}
        if window_minutes is not None:
            changes["rate_window"] = window_minutes * 60.0
        await self._save(interaction, **{key: value for key, value in changes.items() if value is not None})

    @app_commands.command(name="format", description="The audio format used when /generate names none")
    async def default_format(self, interaction: discord.Interaction, format: OutputFormat) -> None:
        await self._save(interaction, default_format=format)

    @app_commands.command(name="jams", description="Caps on one jam's length and sections")
    @app_commands.describe(seconds="The longest a jam's whole track may grow", sections="The most sections in a jam")
    async def jams(
        self, interaction: discord.Interaction,
        seconds: app_commands.Range[int, 10, JAM_MAX_SECONDS] | None = None,
        sections: app_commands.Range[int, 1, JAM_MAX_SECTIONS] | None = None,
    ) -> None:
        changes = {"jam_max_seconds": seconds, "jam_max_sections": sections}
        await self._save(interaction, **{key: value for key, value in changes.items() if value is not None})

    @app_commands.command(name="exempt-role", description="Members with this role skip per-person limits")
    @app_commands.describe(role="Leave out to remove the exemption")
    async def exempt_role(self, interaction: discord.Interaction, role: discord.Role | None = None) -> None:
        await self._save(interaction, exempt_role_id=role.id if role else None)


class Admin(commands.Cog, name="Admin"):
    jamgen = app_commands.Group(
        name="jamgen", description="jamgen administration", guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: JamBot) -> None:
        self.bot = bot
        self.jamgen.add_command(Settings(bot))


async def setup(bot: JamBot) -> None:
    await bot.add_cog(Admin(bot))
