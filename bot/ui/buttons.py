"""The persistent buttons under every result. Their action and job id live in ``custom_id``.

discord.py rebuilds a :class:`JobButton` from any matching ``custom_id``, so buttons
keep working after a restart with no view state kept in memory.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import discord

from bot.errors import UserError, report

ACTIONS = {
    "regen": ("Regenerate", "🔁"), "vary": ("Variations", "🎲"), "extend": ("Extend", "⏩"),
    "jam": ("Start a jam", "🎶"),
}
HANDLER_COG = "Generate"


class ButtonHandler(Protocol):
    async def press(self, interaction: discord.Interaction, action: str, job_id: str) -> None: ...


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"jamgen:(?P<action>regen|vary|extend|jam):(?P<job>[0-9a-f]{12})",
):
    def __init__(self, action: str, job_id: str) -> None:
        label, emoji = ACTIONS[action]
        super().__init__(
            discord.ui.Button(
                label=label, emoji=emoji, style=discord.ButtonStyle.secondary, custom_id=f"jamgen:{action}:{job_id}"
            )
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> JobButton:
        return cls(match["action"], match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        handler: ButtonHandler | None = interaction.client.get_cog(HANDLER_COG)  # type: ignore[attr-defined]
        try:
            if handler is None:
                raise UserError("jamgen is starting up; try again in a moment.")
            await handler.press(interaction, self.action, self.job_id)
        except Exception as exc:  # this item's own boundary: discord.py would only log it
            await report(interaction, exc)


def result_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in ACTIONS:
        view.add_item(JobButton(action, job_id))
    return view
