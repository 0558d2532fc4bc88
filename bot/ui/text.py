"""Plain-text pieces of messages: safe prompts, progress bars, durations."""

from __future__ import annotations

import math

import discord

BAR_WIDTH = 12


def safe(text: str, limit: int = 200) -> str:
    """User text made inert: no markdown, no mentions (belt and braces with ``allowed_mentions``)."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def format_seconds(seconds: float) -> str:
    """``7 s``, ``2 min 05 s``, ``1 h 03 min``."""
    seconds = max(0, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)


def starts_in(seconds: float | None) -> str:
    return "ETA once the first batch is timed" if seconds is None else f"starts in ~{format_seconds(seconds)}"
