"""Plain-text pieces of messages: safe prompts, progress bars, durations."""

from __future__ import annotations

import math
import re
import unicodedata

BAR_WIDTH = 12

# Discord's markdown, and what stops each part (a backslash before a character shows it as it is):
# emphasis, code, spoilers, masked links and <@mentions>/<#channels>/<t:timestamps>/<:emoji:> anywhere;
ESCAPE_ANYWHERE = frozenset("\\*_~|`[]<")
# headings, quotes, lists and -# subtext only where a line starts;
ESCAPE_AT_LINE_START = frozenset("#>-")
_ORDERED_LIST = re.compile(r" *\d{1,9}\. ")  # "1. " at the start of a line
# the ":" of "://" (links are shown and unfurled); and @everyone, @here, <@id>, <@&id> after a zero-width space.
ZERO_WIDTH_SPACE = "\u200b"
_JOINERS = "\u200c\u200d"  # ZWNJ, ZWJ: emoji sequences and some scripts need them
ELLIPSIS = "…"


def _visible(text: str) -> str:
    """One line of text with no control, format or unpaired surrogate character (joiners stay)."""
    kept = (ch for ch in text if ch.isspace() or ch in _JOINERS or unicodedata.category(ch)[0] != "C")
    return "".join(" " if ch.isspace() else ch for ch in kept)  # a new line would start a quote or list


def _escaped(text: str) -> list[str]:
    """Each character of one visible line as it is safe to post (so a cut between two never splits one)."""
    line_start = len(text) - len(text.lstrip(" "))
    ordered = _ORDERED_LIST.match(text)
    pieces = []
    for index, ch in enumerate(text):
        if ch == "@":
            pieces.append("@" + ZERO_WIDTH_SPACE)
        elif (
            ch in ESCAPE_ANYWHERE
            or (index == line_start and ch in ESCAPE_AT_LINE_START)
            or (ordered is not None and index == ordered.end() - 2)
            or (ch == ":" and text.startswith("//", index + 1))
        ):
            pieces.append("\\" + ch)
        else:
            pieces.append(ch)
    return pieces


def safe(text: str, limit: int = 200) -> str:
    """User text made inert, in at most ``limit`` characters (escapes included).

    One line, no markdown, no mentions (belt and braces with ``allowed_mentions``), no control or
    direction-changing characters. Cut with "…" when too long, never inside an escape.
    """
    pieces = _escaped(_visible(text))
    if sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    if limit < len(ELLIPSIS):
        return ""
    budget, kept = limit - len(ELLIPSIS), []
    for piece in pieces:
        budget -= len(piece)
        if budget < 0:
            break
        kept.append(piece)
    return "".join(kept) + ELLIPSIS


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
