"""A ticket: one user request (a /generate, or a button press) and the jobs it made."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.reply import Reply
from bot.ui.text import format_seconds, progress_bar, safe, starts_in
from generation.events import JobHandle

if TYPE_CHECKING:
    from bot.takes import Takes

MESSAGE_LIMIT = 2000  # Discord's limit on a message's content
STATE_ICONS = {"queued": "⏳", "running": "🎛️", "encoding": "🎚️", "done": "✅", "failed": "❌", "cancelled": "🚫"}


@dataclass(eq=False)
class Ticket:
    """Everything the bot tracks for one request until its last job has ended."""

    reply: Reply
    title: str  # e.g. "🎵 lofi beat · 8 s"
    reserved: int = 1  # jobs it will submit: counted against the queue cap from admission on
    tokens: int = 1  # what it took from its user's rate (a long track: one per 30 s), given back on a refund
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    note: str = ""  # e.g. "the bot restarted"
    handles: list[JobHandle] = field(default_factory=list)
    lines: dict[str, str] = field(default_factory=dict)  # job id -> its status line
    created_at: float = field(default_factory=time.monotonic)
    jam_id: str | None = None  # a jam's section: posted in the jam's thread (:mod:`bot.jam`)
    job_ids: list[str] = field(default_factory=list)  # chosen at admission, before the jobs exist
    takes: Takes | None = None  # /generate variants: its jobs are takes, posted together (bot/takes.py)

    @property
    def user_id(self) -> int:
        return self.reply.user_id

    @property
    def guild_id(self) -> int | None:
        return self.reply.guild_id

    @property
    def channel_id(self) -> int:
        return self.reply.channel_id

    def set_line(self, job_id: str, text: str) -> None:
        self.lines[job_id] = text

    def render(self) -> str:
        """The status message: the title, then one line per job; never over Discord's limit."""
        head = [self.title, self.note] if self.note else [self.title]
        text = "\n".join([*head, *(f"`{job_id}` {line}" for job_id, line in self.lines.items())])
        return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


@dataclass(frozen=True)
class Timing:
    """How long a job waited in the queue and took to generate, for its result card."""

    queued_for: float
    generated_in: float


def title_for(kind: str, prompt: str, duration: float, count: int = 1, source: str = "") -> str:
    """The status message's first line (the card's title). ``source``: the uploaded file, for ``continue`` and
    ``melody``."""
    what = safe(prompt, 150)
    if kind == "continue":
        return f"⏩ continuing **{safe(source, 80)}**: **{what}** · +{duration:g} s"
    if kind == "melody":
        return f"🎼 **{what}** · {duration:g} s, on the melody of **{safe(source, 80)}**"
    if kind == "takes":
        on = f", from **{safe(source, 80)}**" if source else ""
        return f"🎚️ {count} takes of **{what}** · {duration:g} s{on}"
    if kind == "vary":
        return f"🎲 {count} variations of **{what}** · {duration:g} s"
    if kind == "extend":
        return f"⏩ extending **{what}** by {duration:g} s"
    if kind == "regen":
        return f"🔁 **{what}** · {duration:g} s, new seed"
    return f"🎵 **{what}** · {duration:g} s"


def queued_line(position: int, total: int, wait: float | None) -> str:
    return f"{STATE_ICONS['queued']} queued — position {position} of {total} · {starts_in(wait)}"


def running_line(fraction: float, left: float | None) -> str:
    left_text = "" if left is None else f" — ~{format_seconds(left)} left"
    return f"{STATE_ICONS['running']} generating {progress_bar(fraction)} {fraction:.0%}{left_text}"


def ended_line(state: str, text: str) -> str:
    return f"{STATE_ICONS[state]} {text}"
