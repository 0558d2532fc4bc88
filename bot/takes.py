"""Variants for A/B (``/generate … variants:2–4``): takes of one prompt, generated in one batch, posted together.

A ticket's takes are numbered in the order of its requests, and the journal keeps each job's number. A take, once
generated, is journaled *delivering* with its audio kept, and held here (:meth:`Takes.hold`); when every job of the
ticket has ended, the held takes are posted in one message (:func:`post_takes`): their files, one card per take
(each footer says ``job <id>``, so :func:`bot.delivery.find_post` finds every take) and numbered buttons
(:class:`bot.ui.buttons.TakeButton`). A failed or cancelled take is left out; the status message says why. When
that message cannot be posted, each take goes on its own card instead: a take is never lost. After a restart, the
kept takes are held again (:mod:`bot.recovery`) and posted with the ones generated since.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from bot.delivery import Post, deliver
from bot.errors import UserError
from bot.journal import JobRecord
from bot.tickets import Ticket, Timing
from bot.ui.buttons import takes_view
from generation.encode import EncodedAudio
from generation.events import JobState
from generation.jobs import SEED_MAX, JobRequest

if TYPE_CHECKING:
    from bot.pipeline import Pipeline
    from bot.throttle import ThrottledEditor

log = logging.getLogger(__name__)

MIN_TAKES, MAX_TAKES = 2, 4
READY = "🎚️ ready: posted with the other takes once they are done"
STAR = "⭐ "


def check_count(count: int) -> int:
    """The number of takes asked for, checked server-side (a client can send anything)."""
    if not MIN_TAKES <= count <= MAX_TAKES:
        raise UserError(f"variants: must be between {MIN_TAKES} and {MAX_TAKES} takes (got {count}).")
    return count


def take_seeds(count: int, seed: int | None) -> list[int]:
    """``seed``, ``seed + 1``, … (wrapping past ``SEED_MAX``), so the same seed gives the same takes again;
    without one, random seeds."""
    if seed is None:
        return [secrets.randbelow(SEED_MAX + 1) for _ in range(count)]
    return [(seed + offset) % (SEED_MAX + 1) for offset in range(count)]


@dataclass(frozen=True)
class Take:
    """A generated take, waiting for its ticket's other takes."""

    number: int
    job_id: str
    request: JobRequest
    audio: EncodedAudio
    timing: Timing


class Takes:
    """A ticket's takes: their numbers, and those generated so far."""

    def __init__(self, numbers: dict[str, int] | None = None) -> None:
        self._numbers = dict(numbers or {})
        self._held: dict[str, Take] = {}

    @classmethod
    def of_records(cls, records: Iterable[JobRecord]) -> Takes | None:
        """A resumed ticket's takes, from the journal; None when its jobs are not takes."""
        numbers = {record.job_id: record.take for record in records if record.take is not None}
        return cls(numbers) if numbers else None

    def number_of(self, job_id: str) -> int:
        """The take's number; a job asked about for the first time gets the next one (requests in their order)."""
        return self._numbers.setdefault(job_id, len(self._numbers) + 1)

    def hold(self, job_id: str, request: JobRequest, audio: EncodedAudio, timing: Timing) -> None:
        self._held[job_id] = Take(self.number_of(job_id), job_id, request, audio, timing)

    def held(self) -> list[Take]:
        return sorted(self._held.values(), key=lambda take: take.number)

    def missing(self) -> list[int]:
        """The numbers of the takes that were not generated (failed or cancelled)."""
        return sorted(number for job_id, number in self._numbers.items() if job_id not in self._held)


def headline(takes: Takes, held: Sequence[Take]) -> str:
    """The post's words after the mention."""
    missing = takes.missing()
    ready = f"your {len(held)} takes are ready" if len(held) > 1 else "your take is ready"
    if missing:
        names = ", ".join(str(number) for number in missing)
        which = f"take {names} did" if len(missing) == 1 else f"takes {names} did"
        ready += f" ({which} not make it: see the status message)"
    return f"{ready}. Press a number to pick your favourite."


async def post_takes(pipeline: Pipeline, ticket: Ticket, status: ThrottledEditor) -> None:
    """Post the ticket's held takes in one message, once its every job has ended; when that fails, each on its own
    card. During a shutdown with takes still to make, the held ones wait (kept on disk) to be posted with those."""
    takes = ticket.takes
    held = [] if takes is None else takes.held()
    if takes is None or not held:
        return
    if pipeline.stopping and any(handle.state is JobState.CANCELLED for handle in ticket.handles):
        log.info("ticket %s: %d takes kept for after the restart", ticket.id, len(held))
        return
    try:
        cards = [await _card(pipeline, ticket, take) for take in held]
        view = takes_view([(take.number, take.job_id) for take in held])
        together = Post.of(ticket.user_id, [card.tracks[0] for card in cards], view, headline(takes, held))
        done = await deliver(ticket.reply, together)
        await pipeline.posted(ticket, [take.job_id for take in held], done)
    except Exception:  # each on its own card (one that was posted after all is found there, not posted again)
        log.exception("ticket %s: could not post its %d takes together; posting each on its own", ticket.id, len(held))
        await asyncio.gather(*(pipeline.post_alone(ticket, take.job_id, _card(pipeline, ticket, take), status)
                               for take in held))


async def _card(pipeline: Pipeline, ticket: Ticket, take: Take) -> Post:
    """The take's card, titled and its file named with its number."""
    title = ticket.title.split("\n", 1)[0].replace("**", "")
    title = f"Take {take.number} · {title}"
    post = await pipeline.card(ticket, take.job_id, take.request, take.audio, take.timing, title)
    return dataclasses.replace(post, filename=f"take-{take.number}-{post.filename}")


def with_favourite(embeds: Sequence[discord.Embed], job_id: str) -> list[discord.Embed]:
    """The takes message's cards with ``job_id``'s marked (its title starts with a star) and no other."""
    marked = []
    for embed in embeds:
        embed = embed.copy()
        title = (embed.title or "").removeprefix(STAR)
        mine = f"job {job_id} " in f"{embed.footer.text or ''} "
        embed.title = (STAR + title)[:256] if mine else title
        marked.append(embed)
    return marked


def favourite_content(content: str, number: int) -> str:
    """The takes message's text, saying which take is the favourite."""
    return f"{content.split(chr(10) + STAR, 1)[0]}\n{STAR}favourite: take {number}"
