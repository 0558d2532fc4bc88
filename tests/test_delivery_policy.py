"""The delivery policy on its own, with spec'd doubles: retries, fallback to the channel, shrinking, and no
second post when a 5xx came back for an upload that was made."""

from __future__ import annotations

import dataclasses
from typing import Any
from unittest import mock

import discord
import numpy as np
import pytest

from bot import delivery
from bot.delivery import Post, ResendStopped, SentOnce, deliver, find_post
from generation import picture as waveform
from generation.encode import EncodeOptions, encode
from generation.errors import EncodeError
from generation.jobs import Normalization, OutputFormat
from tests.helpers import channel_history, http_error, spec_reply

JOB = "j1"
BOT_ID = 99  # spec_reply()'s client.user


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "RETRY_DELAYS", (0.0, 0.0, 0.0))


def post(fmt: OutputFormat = OutputFormat.OPUS) -> Post:
    t = np.linspace(0, 3, 3 * 32000, dtype=np.float32)
    audio = encode((0.3 * np.sin(2 * np.pi * 330 * t))[None], 32000, EncodeOptions(fmt, None, Normalization.NONE))
    return Post(JOB, 7, audio, f"x{audio.extension}", discord.Embed(title="t"), discord.ui.View(timeout=None))


def message(message_id: int) -> Any:
    return mock.Mock(spec=discord.Message, id=message_id)


def card(message_id: int, job_id: str = JOB, author_id: int = BOT_ID) -> Any:
    """A result card in the channel, as the bot posts it (``job <id>`` in the footer)."""
    embed = discord.Embed(title="t").set_footer(text=f"job {job_id} · licence")
    return mock.Mock(spec=discord.Message, id=message_id, author=mock.Mock(id=author_id), embeds=[embed])


async def test_persistent_server_errors_fall_back_to_the_channel() -> None:
    reply: Any = spec_reply()
    reply.webhook.send.side_effect = http_error(503)
    reply.channel.send.return_value = message(9)
    done = await deliver(reply, post())
    assert done.via == "channel" and done.message_id == 9
    assert reply.webhook.send.await_count == 4  # the first try and three retries
    content = reply.channel.send.await_args.args[0]
    assert content.startswith("<@7>") and "reply window had closed" in content


async def test_an_expired_token_goes_straight_to_the_channel() -> None:
    reply: Any = spec_reply()
    reply.webhook.send.side_effect = http_error(401, 50027, "Invalid Webhook Token")
    reply.channel.send.return_value = message(3)
    assert (await deliver(reply, post())).via == "channel"
    assert reply.webhook.send.await_count == 1


async def test_other_errors_are_not_hidden() -> None:
    reply: Any = spec_reply()
    reply.webhook.send.side_effect = http_error(403, 50013, "Missing Permissions")
    with pytest.raises(discord.HTTPException):
        await deliver(reply, post())
    reply.channel.send.assert_not_awaited()


@pytest.mark.parametrize("fmt", [OutputFormat.OPUS, OutputFormat.WAV])
async def test_413_shrinks_until_it_fits(fmt: OutputFormat) -> None:
    reply: Any = spec_reply()
    sizes: list[int] = []
    original = post(fmt)

    async def send(*args: Any, files: list[discord.File], **kwargs: Any) -> Any:
        data = files[0].fp.read()
        sizes.append(len(data))
        if len(data) > 0.5 * len(original.audio.data):
            raise http_error(413, 40005, "Request entity too large")
        return message(1)

    reply.webhook.send.side_effect = send
    await deliver(reply, original)
    assert sizes[0] == len(original.audio.data) and sizes[-1] <= 0.5 * sizes[0]
    assert reply.webhook.send.await_args.kwargs["files"][0].filename.endswith(".opus")  # lossless becomes Opus


async def test_a_file_that_cannot_shrink_enough_fails_clearly() -> None:
    reply: Any = spec_reply()
    reply.webhook.send.side_effect = http_error(413, 40005, "Request entity too large")
    with pytest.raises(EncodeError, match="upload limit"):
        await deliver(reply, post())


async def test_a_5xx_for_an_upload_that_was_posted_is_not_posted_again() -> None:
    reply: Any = spec_reply()
    reply.webhook.send.side_effect = http_error(502)  # Discord posted it; the answer was lost
    channel_history(reply, [card(41)])
    done = await deliver(reply, post())
    assert (done.message_id, done.via) == (41, "followup")
    assert reply.webhook.send.await_count == 1
    reply.channel.send.assert_not_awaited()


async def test_a_5xx_for_an_upload_that_was_not_posted_is_sent_again() -> None:
    reply: Any = spec_reply()
    reply.webhook.send.side_effect = [http_error(502), message(5)]
    channel_history(reply, [card(40, job_id="another job"), card(41, author_id=1234)])
    done = await deliver(reply, post())
    assert (done.message_id, done.via) == (5, "followup")
    assert reply.webhook.send.await_count == 2
    reply.channel.history.assert_called_once_with(limit=delivery.HISTORY_LIMIT)


@pytest.mark.parametrize(("history", "sends"), [([card(41)], 1), ([], 2)])
async def test_discord_py_may_not_resend_an_upload_on_its_own(history: list[Any], sends: int) -> None:
    """discord.py retries a 5xx itself, rewinding the file first: the bot stops it and looks for the card."""
    reply: Any = spec_reply()
    channel_history(reply, history)
    sent: list[discord.File] = []

    async def send(*args: Any, files: list[discord.File], **kwargs: Any) -> Any:
        (file,) = files
        sent.append(file)
        file.reset(seek=0)  # discord.py's first try
        if len(sent) == 1:
            file.reset(seek=1)  # its second try, after the first one's 5xx
        return message(5)

    reply.webhook.send.side_effect = send
    done = await deliver(reply, post())
    assert done.message_id == (41 if history else 5)
    assert len(sent) == sends and all(isinstance(file, SentOnce) for file in sent)


def test_a_sent_once_file_stops_any_rewind_but_the_first() -> None:
    import io

    file = SentOnce(io.BytesIO(b"abc"), "a.opus")
    file.reset(seek=0)
    with pytest.raises(ResendStopped):
        file.reset(seek=1)
    with pytest.raises(ResendStopped):
        file.reset()


async def test_find_post_takes_only_this_bots_card_for_this_job() -> None:
    reply: Any = spec_reply()
    channel_history(reply, [card(1, author_id=1234), card(2, job_id=JOB + "0"), card(3)])
    found = await find_post(reply, JOB)
    assert found is not None and found.id == 3
    reply.channel.history.side_effect = http_error(403, 50001, "Missing Access")
    assert await find_post(reply, JOB) is None  # unreadable: post (maybe twice) rather than lose the track


# -- the waveform picture -------------------------------------------------------------------------------------------


async def test_the_picture_is_the_second_file_and_the_card_shows_it() -> None:
    reply: Any = spec_reply()
    reply.webhook.send.return_value = message(1)
    plain = post()
    png = await delivery.picture_for(JOB, plain.audio, None)
    assert png is not None
    with_picture = dataclasses.replace(plain, picture=png)
    await deliver(reply, with_picture)
    kwargs = reply.webhook.send.await_args.kwargs
    audio_file, picture_file = kwargs["files"]
    assert audio_file.filename == "x.opus" and audio_file.fp.read() == plain.audio.data
    assert picture_file.filename == "waveform.png" and picture_file.fp.read() == png
    assert all(isinstance(file, SentOnce) for file in kwargs["files"])
    assert kwargs["embeds"][0].image.url == "attachment://waveform.png"
    assert plain.embed.image.url is None  # the post's own card is left alone


async def test_a_post_without_a_picture_has_no_image() -> None:
    reply: Any = spec_reply()
    reply.webhook.send.return_value = message(1)
    await deliver(reply, post())
    kwargs = reply.webhook.send.await_args.kwargs
    assert len(kwargs["files"]) == 1 and kwargs["embeds"][0].image.url is None


async def test_a_413_drops_the_picture_before_giving_up_on_the_track() -> None:
    reply: Any = spec_reply()
    uploads: list[int] = []

    async def send(*args: Any, files: list[discord.File], embeds: list[discord.Embed], **kwargs: Any) -> Any:
        uploads.append(len(files))
        if len(files) > 1:  # this channel only ever takes the audio
            raise http_error(413, 40005, "Request entity too large")
        assert embeds[0].image.url is None
        return message(1)

    reply.webhook.send.side_effect = send
    original = post()
    with_picture = dataclasses.replace(original, picture=await delivery.picture_for(JOB, original.audio, None))
    assert (await deliver(reply, with_picture)).message_id == 1
    assert uploads[0] == 2 and uploads[-1] == 1  # the audio shrank first, as far as it could


async def test_a_picture_that_cannot_be_drawn_is_left_out(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    def broken(data: bytes) -> bytes:
        raise RuntimeError("no picture today")

    monkeypatch.setattr(waveform, "picture_of", broken)
    assert await delivery.picture_for(JOB, post().audio, None) is None
    assert "waveform" in caplog.text and "no picture today" in caplog.text


async def test_a_picture_that_does_not_fit_beside_the_audio_is_left_out() -> None:
    audio = post().audio
    png = await delivery.picture_for(JOB, audio, None)
    assert png is not None
    room = len(audio.data) + len(png)
    assert await delivery.picture_for(JOB, audio, room) == png
    assert await delivery.picture_for(JOB, audio, room - 1) is None


# -- several tracks in one post (a ticket's takes) ------------------------------------------------------------------


def takes_post() -> Post:
    """Two tracks, each with its card and picture, in one post."""
    first = post()
    tracks = [delivery.Track(f"j{n}", first.audio, f"take-{n}.opus", discord.Embed(title=f"Take {n}")) for n in (1, 2)]
    return Post.of(7, tracks, discord.ui.View(timeout=None), "your 2 takes are ready")


async def test_several_tracks_go_in_one_message_each_card_showing_its_picture() -> None:
    reply: Any = spec_reply()
    reply.webhook.send.return_value = message(1)
    plain = takes_post()
    png = await delivery.picture_for(JOB, plain.audio, None)
    with_pictures = Post.of(7, [dataclasses.replace(t, picture=png) for t in plain.tracks], plain.view, "ready")
    await deliver(reply, with_pictures)
    kwargs = reply.webhook.send.await_args.kwargs
    assert [f.filename for f in kwargs["files"]] == ["take-1.opus", "take-2.opus", "waveform-1.png", "waveform-2.png"]
    assert [e.image.url for e in kwargs["embeds"]] == ["attachment://waveform-1.png", "attachment://waveform-2.png"]
    assert [e.title for e in kwargs["embeds"]] == ["Take 1", "Take 2"]
    assert reply.webhook.send.await_args.args[0] == "<@7> ready"


async def test_a_413_on_several_tracks_shrinks_every_one() -> None:
    reply: Any = spec_reply()
    totals: list[int] = []
    original = takes_post()

    async def send(*args: Any, files: list[discord.File], **kwargs: Any) -> Any:
        totals.append(sum(len(file.fp.read()) for file in files))
        if totals[-1] > len(original.audio.data):  # the two together must fit where one did
            raise http_error(413, 40005, "Request entity too large")
        return message(1)

    reply.webhook.send.side_effect = send
    assert (await deliver(reply, original)).message_id == 1
    assert totals[0] == 2 * len(original.audio.data) and totals[-1] <= len(original.audio.data)
    assert len(reply.webhook.send.await_args.kwargs["files"]) == 2  # no take left out
