"""The numbered buttons under a message of takes (/generate variants): the requester marks a favourite."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.checks import allowed_here
from bot.errors import UserError
from bot.takes import favourite_content, with_favourite
from bot.ui.buttons import TakeButton, result_view, takes_view

if TYPE_CHECKING:
    from bot.app import JamBot


class TakesCog(commands.Cog, name="Takes"):
    def __init__(self, bot: JamBot) -> None:
        self.bot = bot

    async def favourite(self, interaction: discord.Interaction, job_id: str) -> None:
        """Mark the take in the message and the journal; the presser gets that take's buttons, privately."""
        allowed_here(interaction, self.bot.store)
        journal = self.bot.store.journal
        record = await journal.get(job_id)
        if record is None or record.take is None or record.guild_id != interaction.guild_id:
            raise UserError("jamgen doesn't know that take (it may have been pruned). Use /generate.")
        if record.user_id != interaction.user.id:
            raise UserError(
                f"Only <@{record.user_id}> can pick the favourite of these takes. Use /generate variants:… for yours."
            )
        await journal.set_favourite(record.ticket_id, job_id)
        takes = [(take.take or 0, take.job_id) for take in await journal.takes_of(record.ticket_id)]
        message = interaction.message
        if message is not None:
            await interaction.response.edit_message(
                content=favourite_content(message.content, record.take), embeds=with_favourite(message.embeds, job_id),
                view=takes_view(takes, favourite=job_id), allowed_mentions=discord.AllowedMentions.none(),
            )
        else:
            await interaction.response.defer()
        await interaction.followup.send(
            f"⭐ Take {record.take} is your favourite. Go on from it:", view=result_view(job_id), ephemeral=True
        )


async def setup(bot: JamBot) -> None:
    bot.add_dynamic_items(TakeButton)
    await bot.add_cog(TakesCog(bot))
