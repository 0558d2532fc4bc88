"""/queue and /cancel."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import is_moderator
from bot.errors import UserError
from bot.jam.render import waiting_line
from bot.tickets import Ticket
from bot.ui.text import format_seconds, safe
from generation.events import JobHandle, JobState

if TYPE_CHECKING:
    from bot.app import JamBot


class Queue(commands.Cog, name="Queue"):
    def __init__(self, bot: JamBot) -> None:
        self.bot = bot

    @app_commands.command(name="queue", description="Your jobs, their places in the queue and ETAs")
    async def queue(self, interaction: discord.Interaction) -> None:
        """Only your jobs of this server (prompts of other servers stay there), and the totals."""
        pipeline = self.bot.pipeline
        positions = pipeline.engine.positions()
        waits = pipeline.waits() or {}
        mine = [handle for _, handle in self._live(interaction, own_only=True)]
        lines = [self._line(handle, positions, waits) for handle in reversed(mine)]
        if self.bot.jams is not None:  # jam sections that wait for the one before them
            lines += [waiting_line(jam, item) for jam, item in
                      self.bot.jams.waiting_of(interaction.guild_id, interaction.user.id)]
        running = sum(1 for job in pipeline.engine.jobs() if job.state is JobState.RUNNING)
        summary = f"**Queue:** {len(positions)} waiting, {running} generating."
        body = "\n".join(lines) if lines else "You have no jobs queued here. Start one with /generate."
        await interaction.response.send_message(
            f"{summary}\n{body}"[:2000], ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    @staticmethod
    def _line(handle: JobHandle, positions: dict[str, int], waits: dict[str, tuple[float, float]]) -> str:
        prompt = safe(handle.request.prompt, 60)
        if handle.id in positions:
            eta = f", done in ~{format_seconds(waits[handle.id][1])}" if handle.id in waits else ""
            return f"`{handle.id}` {prompt} — position {positions[handle.id]}{eta}"
        return f"`{handle.id}` {prompt} — {handle.state.value}"

    @app_commands.command(name="cancel", description="Cancel your queued or running job")
    @app_commands.describe(job="Which job (default: your latest)")
    async def cancel(self, interaction: discord.Interaction, job: str | None = None) -> None:
        ticket, handle = self._target(interaction, job)
        mine = ticket.user_id == interaction.user.id
        reason = "cancelled by you" if mine else f"cancelled by moderator {interaction.user.display_name}"
        if not self.bot.pipeline.engine.cancel(handle.id, safe(reason, 100)):
            raise UserError(f"Job `{handle.id}` has already finished.")
        await interaction.response.send_message(f"Cancelled job `{handle.id}`.", ephemeral=True)

    @cancel.autocomplete("job")
    async def _jobs(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        choices = []
        for _, handle in self._cancellable(interaction):
            if current.lower() in f"{handle.id} {handle.request.prompt}".lower():
                name = f"{handle.id} · {handle.state.value} · {handle.request.prompt}"[:100]
                choices.append(app_commands.Choice(name=name, value=handle.id))
        return choices[:25]

    def _cancellable(self, interaction: discord.Interaction) -> list[tuple[Ticket, JobHandle]]:
        """Your live jobs of this guild; for a moderator, every live job of this guild. Newest first."""
        return self._live(interaction, own_only=not is_moderator(interaction))

    def _live(self, interaction: discord.Interaction, *, own_only: bool) -> list[tuple[Ticket, JobHandle]]:
        """Live jobs of the guild the interaction comes from (yours only, with ``own_only``). Newest first."""
        found = []
        for ticket in self.bot.pipeline.tickets():
            if ticket.guild_id != interaction.guild_id or (own_only and ticket.user_id != interaction.user.id):
                continue
            found += [(ticket, handle) for handle in ticket.handles if not handle.done]
        return sorted(found, key=lambda pair: pair[1].submitted_at, reverse=True)

    def _target(self, interaction: discord.Interaction, job: str | None) -> tuple[Ticket, JobHandle]:
        candidates = self._cancellable(interaction)
        if job is None:
            own = [pair for pair in candidates if pair[0].user_id == interaction.user.id]
            if not own:
                raise UserError("You have no queued or running jobs.")
            return own[0]
        job = job.strip().strip("`")
        for pair in candidates:
            if pair[1].id == job:
                return pair
        raise UserError(f"No job {safe(job, 40)} of yours is queued or running here. /queue lists them.")


async def setup(bot: JamBot) -> None:
    await bot.add_cog(Queue(bot))
