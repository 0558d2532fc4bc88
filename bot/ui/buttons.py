"""The persistent buttons under every result, and the numbered ones under a message of takes. Their action and
job id live in ``custom_id``.

discord.py rebuilds a :class:`JobButton` from any matching ``custom_id``, so buttons
keep working after a restart with no view state kept in memory.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import discord

from bot.errors import UserError, report

ACTIONS = {
    "regen": ("Regenerate", "🔁"), "vary": ("Variations", "🎲"), "extend": ("Extend", "⏩"),
    "jam": ("Start a jam", "🎶"),
}
HANDLER_COG = "Generate"
TAKES_COG = "Takes"
_NUMBER = re.compile(r"\d+")


class ButtonHandler(Protocol):
    async def press(self, interaction: discord.Interaction, action: str, job_id: str) -> None: ...


class FavouriteHandler(Protocol):
    async def favourite(self, interaction: discord.Interaction, job_id: str) -> None: ...


async def _handle(interaction: discord.Interaction, cog: str, call: Callable[[Any], Awaitable[None]]) -> None:
    """Hand the press to ``cog``: a button's own error boundary (discord.py would only log an error)."""
    try:
        handler = interaction.client.get_cog(cog)  # type: ignore[attr-defined]
        if handler is None:
            raise UserError("jamgen is starting up; try again in a moment.")
        await call(handler)
    except Exception as exc:
        await report(interaction, exc)


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
        async def press(handler: ButtonHandler) -> None:
            await handler.press(interaction, self.action, self.job_id)

        await _handle(interaction, HANDLER_COG, press)


class TakeButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"jamgen:fav:(?P<job>[0-9a-f]{12})",
):
    """A numbered button under a message of takes (bot/takes.py): pressing it marks that take the favourite."""

    def __init__(self, job_id: str, number: int, chosen: bool = False) -> None:
        style = discord.ButtonStyle.success if chosen else discord.ButtonStyle.secondary
        super().__init__(
            discord.ui.Button(label=f"Take {number}", emoji="⭐", style=style, custom_id=f"jamgen:fav:{job_id}")
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> TakeButton:
        number = _NUMBER.search(getattr(item, "label", None) or "")
        return cls(match["job"], int(number[0]) if number else 0)

    async def callback(self, interaction: discord.Interaction) -> None:
        async def press(handler: FavouriteHandler) -> None:
            await handler.favourite(interaction, self.job_id)

        await _handle(interaction, TAKES_COG, press)


def result_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in ACTIONS:
        view.add_item(JobButton(action, job_id))
    return view


def takes_view(takes: Sequence[tuple[int, str]], favourite: str | None = None) -> discord.ui.View:
    """Numbered buttons for ``takes`` ((number, job id) pairs), the ``favourite`` take's highlighted."""
    view = discord.ui.View(timeout=None)
    for number, job_id in takes:
        view.add_item(TakeButton(job_id, number, chosen=job_id == favourite))
    return view
