"""Posting a finished track: a follow-up while the interaction token lives, else in the channel.

Discord errors are handled here, once: a 5xx or 429 is retried with backoff (within the
token's life for follow-ups), a 413 (the upload limit shrank) re-encodes the file smaller,
and an expired token falls back to the channel, mentioning the user.

Each post carries the track's waveform picture (:mod:`generation.picture`) when it could be drawn and fits
the upload limit beside the audio; the audio is always the first file, and a track is never lost for its
picture: one that cannot be drawn, or does not fit, is left out.

At most once: a 5xx can come back for an upload Discord did post (its edge gave up waiting
for its backend), so no try is made again blindly. discord.py's own retry loop is stopped
(:class:`SentOnce`), and before every new try the channel is searched for the job's card
(every card's footer says ``job <id>``); when it is there, that is the delivery.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import discord

from bot.reply import Reply, only_user
from generation import picture as waveform
from generation.encode import EncodedAudio, shrink
from generation.errors import EncodeError
from generation.splice import codes_bytes

log = logging.getLogger(__name__)

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)
SHRINK_FACTOR = 0.6
HISTORY_LIMIT = 100  # recent channel messages searched for a card that may have been posted already
_SLUG = re.compile(r"[^a-z0-9]+")

Send = Callable[[list[discord.File], list[discord.Embed]], Awaitable[discord.Message]]
Find = Callable[[], Awaitable[discord.Message | None]]


class ResendStopped(Exception):
    """discord.py was about to send an upload again, after a 5xx (the upload may have been posted) or a 429."""


class SentOnce(discord.File):
    """A file that discord.py sends once: its retry loop must not post a track a second time.

    discord.py retries a 5xx by itself (any 5xx on webhooks, 500/502/504 on bot routes) after waiting, and
    rewinds every file before each try but the first (``reset(seek=try_number)``). Stopping there hands the
    decision back to :func:`_with_retries`, which first looks for the card in the channel.
    """

    def reset(self, *, seek: int | bool = True) -> None:
        if seek:
            raise ResendStopped("discord.py was about to send the upload again")
        super().reset(seek=seek)


@dataclass(frozen=True)
class Delivery:
    message_id: int
    via: str  # "followup" | "channel"


@dataclass(frozen=True)
class Track:
    """One audio file of a post, with its card and waveform picture."""

    job_id: str
    audio: EncodedAudio
    filename: str
    embed: discord.Embed
    picture: bytes | None = None


@dataclass(frozen=True)
class Post:
    """A track's post: the same for a follow-up and a channel message. ``more``: further tracks posted in the same
    message (a ticket's takes, :mod:`bot.takes`), each file and card after the first one's."""

    job_id: str  # the card's footer says ``job <id>``: how a post that may exist is found
    user_id: int
    audio: EncodedAudio
    filename: str
    embed: discord.Embed
    view: discord.ui.View
    note: str = ""
    picture: bytes | None = None  # the waveform PNG, shown in the card; None: posted without one
    more: tuple[Track, ...] = ()
    headline: str = "your track is ready"

    @classmethod
    def of(cls, user_id: int, tracks: Sequence[Track], view: discord.ui.View, headline: str) -> Post:
        first, *rest = tracks
        return cls(first.job_id, user_id, first.audio, first.filename, first.embed, view, picture=first.picture,
                   more=tuple(rest), headline=headline)

    @property
    def tracks(self) -> tuple[Track, ...]:
        return (Track(self.job_id, self.audio, self.filename, self.embed, self.picture), *self.more)

    @property
    def content(self) -> str:
        return f"<@{self.user_id}> {self.headline}{self.note}"

    @property
    def mentions(self) -> discord.AllowedMentions:
        return only_user(self.user_id)


def slug(text: str, fallback: str) -> str:
    """``text`` as the start of a file name: lower-case ASCII letters and digits joined by dashes, at most 40."""
    return _SLUG.sub("-", text.lower()).strip("-")[:40] or fallback


def file_name(prompt: str, seed: int, audio: EncodedAudio) -> str:
    return f"{slug(prompt, 'track')}-{seed}{audio.extension}"  # the extension has its dot


async def picture_for(job_id: str, audio: EncodedAudio, limit: int | None) -> bytes | None:
    """The track's waveform PNG, drawn in a worker thread; None when it cannot be drawn (logged), or when it would
    not fit the upload limit beside the audio (``limit``: the request's ``max_file_bytes``, the interaction's
    upload limit, which Discord applies to the whole upload)."""
    try:
        png = await asyncio.to_thread(waveform.picture_of, audio.data)
    except Exception:
        log.exception("could not draw job %s's waveform; posting the track without it", job_id)
        return None
    if limit is not None and len(audio.data) + len(png) > limit:
        log.info("job %s: the audio (%d bytes) leaves no room for its picture (%d) under the %d byte limit; "
                 "posting it without", job_id, len(audio.data), len(png), limit)
        return None
    return png


async def save_audio(directory: Path, job_id: str, audio: EncodedAudio) -> Path:
    """Keep the file until delivery is confirmed (and for ⏩ Extend, until retention prunes it), with its codes
    beside it when the job kept them (:func:`codes_path`: what a jam started from the track continues)."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    if audio.codes is not None:
        async with aiofiles.open(codes_path(directory / job_id), "wb") as out:
            await out.write(await asyncio.to_thread(codes_bytes, audio.codes))
    path = directory / f"{job_id}.{audio.extension}"
    async with aiofiles.open(path, "wb") as out:
        await out.write(audio.data)
    return path


CODES_SUFFIX = ".codes.npy"


def codes_path(audio_path: Path) -> Path:
    """Where a kept track's codes are (``<job>.codes.npy`` beside ``<job>.opus``)."""
    return audio_path.with_name(audio_path.name.split(".", 1)[0] + CODES_SUFFIX)


def token_gone(exc: discord.HTTPException) -> bool:
    # 401 Invalid Webhook Token (50027), 404 Unknown Webhook / interaction (10015 / 10062)
    return exc.status in (401, 404) or exc.code in (50027, 10015, 10062)


def too_large(exc: discord.HTTPException) -> bool:
    return exc.status == 413 or exc.code == 40005


def retryable(exc: discord.HTTPException) -> bool:
    return exc.status >= 500 or exc.status == 429


def falls_back(exc: Exception) -> bool:
    """Whether a failed follow-up goes to the channel: the token is gone, or Discord kept failing."""
    if isinstance(exc, ResendStopped):
        return True
    return isinstance(exc, discord.HTTPException) and (token_gone(exc) or retryable(exc))


async def find_post(reply: Reply, job_id: str) -> discord.Message | None:
    """This bot's card for ``job_id`` among the channel's recent messages; None when it is not there, or when the
    channel cannot be read (no Read Message History: then posting, perhaps twice, beats losing the track)."""
    marker = f"job {job_id} "
    me = reply.client.user
    try:
        async for message in reply.channel.history(limit=HISTORY_LIMIT):
            if me is not None and message.author.id != me.id:
                continue
            if any(marker in f"{embed.footer.text or ''} " for embed in message.embeds):
                return message
    except discord.HTTPException as exc:
        log.warning("could not read channel %s to look for job %s (%s)", reply.channel_id, job_id, exc.status)
    return None


async def deliver(reply: Reply, post: Post) -> Delivery:
    """Post ``post`` for ``reply``'s user. Pings only that user, never roles or everyone."""

    async def find() -> discord.Message | None:
        return await find_post(reply, post.job_id)

    if reply.followups and reply.token_usable():
        try:
            message = await _with_retries(post, lambda files, embeds: _followup(reply, post, files, embeds),
                                          reply.token_usable, find)
            return Delivery(message.id, "followup")
        except (discord.HTTPException, ResendStopped) as exc:
            if not falls_back(exc):
                raise
            log.info("follow-up for user %s failed (%s); posting in the channel", reply.user_id, exc)
        found = await find()
        if found is not None:
            return Delivery(found.id, "followup")
    late = " (the reply window had closed, so it is posted here)"
    channel_post = dataclasses.replace(post, note=late) if reply.followups else post
    message = await _with_retries(
        channel_post, lambda files, embeds: _to_channel(reply, channel_post, files, embeds), lambda: True, find
    )
    return Delivery(message.id, "channel")


async def _followup(
    reply: Reply, post: Post, files: list[discord.File], embeds: list[discord.Embed]
) -> discord.Message:
    return await reply.webhook.send(
        post.content, files=files, embeds=embeds, view=post.view, allowed_mentions=post.mentions, wait=True
    )


async def _to_channel(
    reply: Reply, post: Post, files: list[discord.File], embeds: list[discord.Embed]
) -> discord.Message:
    return await reply.channel.send(
        post.content, files=files, embeds=embeds, view=post.view, allowed_mentions=post.mentions
    )


def _upload(
    post: Post, audios: list[EncodedAudio], pictures: list[bytes | None]
) -> tuple[list[discord.File], list[discord.Embed]]:
    """The files (every track's audio first, then the pictures there are) and the cards, each showing its
    track's picture."""
    tracks = post.tracks
    files: list[discord.File] = [
        SentOnce(io.BytesIO(audio.data), _renamed(track.filename, audio))
        for track, audio in zip(tracks, audios, strict=True)
    ]
    embeds: list[discord.Embed] = []
    for number, (track, picture) in enumerate(zip(tracks, pictures, strict=True), start=1):
        if picture is None:
            embeds.append(track.embed)
            continue
        name = waveform.FILENAME if len(tracks) == 1 else f"waveform-{number}.png"
        files.append(SentOnce(io.BytesIO(picture), name))
        embeds.append(track.embed.copy().set_image(url=f"attachment://{name}"))
    return files, embeds


async def _with_retries(post: Post, send: Send, still_ok: Callable[[], bool], find: Find) -> discord.Message:
    """Send, retrying server errors with backoff and re-encoding smaller after a 413; after a 5xx or a 429, the
    channel is searched for the card before the next try (a 5xx may come back for a post that was made). When the
    audio cannot shrink any more, the pictures are left out before giving up."""
    audios = [track.audio for track in post.tracks]
    pictures = [track.picture for track in post.tracks]
    delays = iter(RETRY_DELAYS)
    while True:
        try:
            return await send(*_upload(post, audios, pictures))
        except ResendStopped:
            if next(delays, None) is None or not still_ok():  # no sleep: discord.py has waited already
                raise
            log.warning("Discord answered an upload with a 5xx or 429; looking for it before sending it again")
        except discord.HTTPException as exc:
            if too_large(exc):
                try:
                    audios = [await _smaller(audio) for audio in audios]
                except EncodeError:
                    if all(picture is None for picture in pictures):
                        raise
                    log.info("job %s: the audio cannot shrink further; sending it without pictures", post.job_id)
                    pictures = [None for _ in pictures]
                continue
            delay = next(delays, None) if retryable(exc) else None
            if delay is None or not still_ok():
                raise
            log.warning("Discord answered %s; retrying in %.0f s", exc.status, delay)
            await asyncio.sleep(delay)
        found = await find()
        if found is not None:
            log.info("job %s was posted despite the error: not posting it again", post.job_id)
            return found


async def _smaller(audio: EncodedAudio) -> EncodedAudio:
    target = int(len(audio.data) * SHRINK_FACTOR)
    log.info("upload refused as too large (%d bytes); re-encoding under %d", len(audio.data), target)
    try:
        return await asyncio.to_thread(shrink, audio, target)
    except EncodeError as exc:
        raise EncodeError(f"The track is larger than this channel's upload limit, even re-encoded ({exc})") from exc


def _renamed(filename: str, audio: EncodedAudio) -> str:
    return f"{filename.rsplit('.', 1)[0]}{audio.extension}"
