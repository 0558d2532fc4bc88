"""/help: the commands, this server's limits, and the licence of the model weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.ui.embeds import help_embed

if TYPE_CHECKING:
    from bot.app import JamBot


class Help(commands.Cog, name="Help"):
    def __init__(self, bot: JamBot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="How jamgen works, its limits, and the model licence")
    async def help(self, interaction: discord.Interaction) -> None:
        pipeline = self.bot.pipeline
        guild = self.bot.store.guild(interaction.guild_id)
        limits = pipeline.limits(guild)
        embed = help_embed(
            max_duration=pipeline.max_duration(guild), max_jobs=limits.max_active, rate_count=limits.rate_count,
            rate_window=limits.rate_window, models=self.bot.models,
        )
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: JamBot) -> None:
    await bot.add_cog(Help(bot))
