"""A jam and its rules, with no I/O."""

from __future__ import annotations

import secrets
import time
from enum import Enum

from pydantic import BaseModel, Field

from bot.errors import UserError

CONTEXT_SECONDS = 10.0  # each section continues the jam's last 10 s of codes (as an upload's continuation does)


class JamState(str, Enum):
    OPEN = "open"
    CLOSED = "closed"


class Section(BaseModel):
    """A posted section. Its file (in the store) starts with ``context_seconds`` of the jam's tail."""

    number: int
    author_id: int
    prompt: str
    seconds: float  # new music it added
    job_id: str
    context_seconds: float = 0.0
    message_id: int | None = None  # its post in the thread


class Waiting(BaseModel):
    """A section asked for and not posted yet: its job runs (``job_id`` set) or it waits for the one before it."""

    author_id: int
    role_ids: list[int] = Field(default_factory=list)  # for the server's exempt role, when it starts
    prompt: str
    seconds: float
    inputs: dict[str, str | float] = Field(default_factory=dict)  # an upload's request fields (a first section)
    job_id: str | None = None
    context_frames: int = 0  # of the jam's tail it continues (set when it starts)
    application_id: int | None = None  # the /jam add interaction: its status message is kept up to date
    token: str | None = None
    interaction_at: float | None = None
    status_message_id: int | None = None
    added_at: float = Field(default_factory=time.time)


class Jam(BaseModel):
    id: str = Field(default_factory=lambda: secrets.token_hex(6))
    guild_id: int
    channel_id: int  # where it was started
    thread_id: int  # where it posts (the channel itself when no thread could be opened)
    host_id: int
    title: str
    model: str
    format: str
    max_file_bytes: int | None = None
    frame_rate: float | None = None  # code frames per second, learnt from its first section
    sections: list[Section] = Field(default_factory=list)
    waiting: list[Waiting] = Field(default_factory=list)
    track_message_id: int | None = None  # the message with the whole track, edited in place
    state: JamState = JamState.OPEN
    closed_reason: str | None = None
    created_at: float = Field(default_factory=time.time)
    active_at: float = Field(default_factory=time.time)  # the last add, post or undo: idle jams close

    @property
    def seconds(self) -> float:
        return sum(section.seconds for section in self.sections)

    @property
    def planned_seconds(self) -> float:
        return self.seconds + sum(item.seconds for item in self.waiting)

    @property
    def running(self) -> Waiting | None:
        """The section whose job runs now (only the first waiting one ever does)."""
        return self.waiting[0] if self.waiting and self.waiting[0].job_id is not None else None

    def idle_since(self, now: float, hours: float) -> bool:
        return self.state is JamState.OPEN and not self.waiting and now - self.active_at > hours * 3600


def check_add(jam: Jam, seconds: float, max_seconds: int, max_sections: int) -> None:
    """Refuse a section the jam has no room for, saying the cap."""
    if jam.state is not JamState.OPEN:
        raise UserError("This jam has ended. Start a new one with /jam start.")
    if len(jam.sections) + len(jam.waiting) >= max_sections:
        raise UserError(f"This jam has reached this server's cap of {max_sections} sections. "
                        "`/jam export` it, or `/jam end` it and start another.")
    room = max_seconds - jam.planned_seconds
    if seconds > room:
        more = f"a section can add at most {room:g} s" if room >= 1 else "it is full"
        raise UserError(f"This jam is {jam.planned_seconds:g} s long (queued sections included) and this server caps "
                        f"jams at {max_seconds} s: {more}.")


def check_may_change(jam: Jam, user_id: int, moderator: bool, author_id: int | None, what: str) -> None:
    """Undo: the section's author, the host or a moderator; end: the host or a moderator (``author_id`` None)."""
    if moderator or user_id == jam.host_id or (author_id is not None and user_id == author_id):
        return
    who = f"<@{author_id}>, " if author_id is not None else ""
    raise UserError(f"Only {who}the jam's host <@{jam.host_id}> or a moderator (Manage Server) can {what}.")
