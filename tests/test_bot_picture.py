"""A picture with every track: the waveform PNG in the result's card, through the fake Discord."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from generation import picture
from tests.bot_harness import World, running_bot, waveform_of
from tests.helpers import decode


async def test_every_result_carries_its_waveform(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        interaction = await world.generate(prompt="waveform please", duration=3)
        (post,) = await world.result_of(interaction)
    image = waveform_of(post)
    audio = decode(post.attachments[0].data)  # the audio is still the first file
    assert post.attachments[0].filename.endswith(".opus") and abs(audio.duration - 3.0) < 0.05
    assert (np.asarray(image) == picture.PEAK).any()  # the model's noise shows: not a blank picture


async def test_a_picture_that_cannot_be_drawn_never_loses_the_track(
    world: World, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(data: bytes) -> bytes:
        raise MemoryError("no room for a picture")

    monkeypatch.setattr(picture, "picture_of", broken)
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        interaction = await world.generate(prompt="no picture")
        (post,) = await world.result_of(interaction)
        await world.fake.wait_for(lambda: "posted below" in interaction.original.content)
    (attachment,) = post.attachments
    assert abs(decode(attachment.data).duration - 2.0) < 0.05
    assert "image" not in post.embeds[0]  # no card pointing at a file that is not there
    assert "no room for a picture" in caplog.text


async def test_a_picture_with_no_room_beside_the_audio_is_left_out(
    world: World, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Discord's upload limit is for the whole message: the audio fills it first, the picture only if it fits."""
    limit = 40_000  # 4 s of Opus is re-encoded under it (~36 KB): no room for a 30 KB picture
    monkeypatch.setattr(picture, "picture_of", lambda data: b"\x89PNG" + bytes(30_000))
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        interaction = await world.fake.send_command(
            "generate", {"prompt": "big", "duration": 4}, user=world.alice, guild=world.guild, channel=world.jam,
            attachment_size_limit=limit,
        )
        (post,) = await world.result_of(interaction)
    (attachment,) = post.attachments
    assert len(attachment.data) <= limit and "image" not in post.embeds[0]
