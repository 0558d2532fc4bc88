"""A jam's card (its sections, authors and prompts) and the lines that speak of it."""

from __future__ import annotations

import discord

from bot.jam.model import Jam, JamState, Waiting
from bot.ui.embeds import COLOUR, LICENCE_NOTE
from bot.ui.text import format_seconds, safe

FIELD_LIMIT = 4000  # of an embed's description (Discord's is 4096)


def card(jam: Jam, heading: str = "") -> discord.Embed:
    """The sections with their authors and prompts (the credits), and what waits."""
    lines = [f"**{section.number}.** <@{section.author_id}> · {safe(section.prompt, 120)} · {section.seconds:.1f} s"
             for section in jam.sections]
    lines += [f"⏳ <@{item.author_id}> · {safe(item.prompt, 120)} · {item.seconds:g} s ({_state(item)})"
              for item in jam.waiting]
    description = "\n".join(lines) or "No section yet."
    if len(description) > FIELD_LIMIT:
        description = "…\n" + description[-(FIELD_LIMIT - 2):].split("\n", 1)[-1]
    embed = discord.Embed(title=f"🎶 {safe(jam.title, 200)}", description=description, colour=COLOUR)
    if heading:
        embed.set_author(name=heading[:256])
    embed.add_field(name="Host", value=f"<@{jam.host_id}>")
    embed.add_field(name="Length", value=f"{format_seconds(jam.seconds)} · {len(jam.sections)} sections")
    embed.add_field(name="State", value="open" if jam.state is JamState.OPEN else "ended")
    embed.set_footer(text=f"jam {jam.id} · {LICENCE_NOTE}")
    return embed


def _state(item: Waiting) -> str:
    return "being made" if item.job_id is not None else "waits its turn"


def credits(jam: Jam) -> str:
    """One line: who made the jam."""
    authors = list(dict.fromkeys(section.author_id for section in jam.sections))
    return f"by {', '.join(f'<@{author}>' for author in authors)}" if authors else ""


def section_title(jam: Jam, number: int, prompt: str, seconds: float) -> str:
    return f"🎶 section {number} of **{safe(jam.title, 80)}**: **{safe(prompt, 120)}** · +{seconds:g} s"


def waiting_line(jam: Jam, item: Waiting) -> str:
    """/queue's line for a section that waits for the one before it."""
    number = len(jam.sections) + jam.waiting.index(item) + 1
    what = f"🎶 jam **{safe(jam.title, 60)}**, section {number}: {safe(item.prompt, 60)}"
    return f"{what} — waits for section {number - 1}"
