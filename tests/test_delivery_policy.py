"""The delivery policy on its own, with spec'd doubles: retries, fallback to the channel, shrinking."""

from __future__ import annotations

from typing import Any
from unittest import mock

import discord
import numpy as np
import pytest

from bot import delivery
from bot.delivery import Post, deliver
from generation.encode import EncodeOptions, encode
from generation.errors import EncodeError
from generation.jobs import Normalization, OutputFormat
from tests.helpers import http_error, spec_reply


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "RETRY_DELAYS", (0.0, 0.0, 0.0))


def post(fmt: OutputFormat = OutputFormat.OPUS) -> Post:
    t = np.linspace(0, 3, 3 * 32000, dtype=np.float32)
    audio = encode((0.3 * np.sin(2 * np.pi * 330 * t))[None], 32000, EncodeOptions(fmt, None, Normalization.NONE))
    return Post(7, audio, f"x.{audio.extension}", discord.Embed(title="t"), discord.ui.View(timeout=None))


def message(message_id: int) -> Any:
    return mock.Mock(spec=discord.Message, id=message_id)


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

    async def send(*args: Any, file: discord.File, **kwargs: Any) -> Any:
        data = file.fp.read()
        sizes.append(len(data))
        if len(data) > 0.5 * len(original.audio.data):
            raise http_error(413, 40005, "Request entity too large")
        return message(1)

    reply.webhook.send.side_effect = send
    await deliver(reply, original)
    assert sizes[0] == len(original.audio.data) and sizes[-1] <= 0.5 * sizes[0]
    assert reply.webhook.send.await_args.kwargs["file"].filename.endswith(".opus")  # lossless becomes Opus


async def test_a_file_that_cannot_shrink_enough_fails_clearly() -> None:
    reply: Any = spec_reply()
    reply.webhook.send.side_effect = http_error(413, 40005, "Request entity too large")
    with pytest.raises(EncodeError, match="upload limit"):
        await deliver(reply, post())
