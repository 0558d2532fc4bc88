"""Audio in, end to end: /generate's audio option, the "Continue this track" / "Use as melody" message menus, and
every hostile or broken file refused with its own message while the bot keeps serving."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from bot.housekeeping import prune
from bot.journal import State
from tests import audio_files
from tests.bot_harness import World, job_of, journal_of, running_bot, state_reached
from tests.fakes.discord import FakeAttachment, FakeInteraction, FakeMessage
from tests.helpers import decode

EPHEMERAL = 64


@pytest.fixture(scope="module")
def song() -> bytes:
    """14 s of a tone that steps up in pitch each second, as an mp3."""
    return audio_files.tone(".mp3", 14.0, channels=2)


def fields_of(post: FakeMessage) -> dict[str, str]:
    return {field["name"]: field["value"] for field in post.embeds[0]["fields"]}


def pitch(samples: np.ndarray, rate: int, second: int) -> float:
    """The loudest frequency in the middle half of the given second."""
    window = samples.mean(axis=0)[int((second + 0.25) * rate): int((second + 0.75) * rate)]
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
    return float(np.fft.rfftfreq(len(window), 1 / rate)[spectrum.argmax()])


def tone_pitch(second: int) -> float:
    """The pitch of :func:`audio_files.tone` in that second of the file."""
    return 440.0 * (1 + second / 8)


async def test_a_continuation_from_an_uploaded_file(world: World, song: bytes, tiny_model_dir: Path,
                                                    tmp_path: Path) -> None:
    upload = FakeAttachment("song.mp3", "audio/mpeg", song)
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        interaction = await world.generate(prompt="funk bass", duration=3, format="wav", audio=upload)
        assert (await interaction.wait_callback()).type == 5
        (post,) = await world.result_of(interaction)
        regen = await world.fake.press_button(post, f"jamgen:regen:{job_of(post)}", user=world.alice,
                                              guild=world.guild)
        (again,) = await world.result_of(regen)
    assert fields_of(post)["Audio in"] == "continues the last 10 s of song.mp3 (0:04–0:14)"
    assert fields_of(again)["Audio in"] == fields_of(post)["Audio in"], "🔁 continues the same part again"
    assert abs(decode(again.attachments[0].data).duration - 13.0) < 0.05 and job_of(again) != job_of(post)
    assert post.embeds[0]["title"].startswith("⏩ continuing song.mp3: funk bass · +3 s")
    track = decode(post.attachments[0].data)
    assert abs(track.duration - 13.0) < 0.05  # the part it heard, then 3 s more
    for second in range(10):  # the track starts with the upload's seconds 4 to 13, as they were
        assert abs(pitch(track.samples, track.sample_rate, second) - tone_pitch(4 + second)) < 5
    assert world.fake.downloads == [upload.id]
    kept = list((tmp_path / "uploads").iterdir())
    assert len(kept) == 1 and kept[0].suffix == ".wav", "only the decoded part is kept, not the upload"


async def menu_form(world: World, name: str, target: FakeMessage) -> FakeInteraction:
    menu = await world.fake.send_message_command(name, target, user=world.alice, guild=world.guild)
    callback = await menu.wait_callback()
    assert callback.type == 9, f"expected a form, got {callback}"
    return menu


def form_defaults(menu: FakeInteraction) -> dict[str, str]:
    assert menu.callback is not None and menu.callback.data is not None
    rows = menu.callback.data["components"]
    return {row["components"][0]["custom_id"]: row["components"][0].get("value", "") for row in rows}


async def test_the_context_menu_continues_a_message_s_audio_without_a_new_upload(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    loop = FakeAttachment("loop.ogg", None, audio_files.tone(".ogg", 5.0))
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        await world.fake.wait_for(lambda: any(c["type"] == 3 for c in world.fake.commands.get("global", [])))
        posted = await world.fake.post_message(world.jam, world.bob, "my bass loop, 90 bpm", [loop])
        menu = await menu_form(world, "Continue this track", posted)
        assert form_defaults(menu) == {"prompt": "my bass loop, 90 bpm", "seconds": "8"}
        submitted = await world.fake.submit_modal(menu, {"prompt": "jazzy bass", "seconds": "2"})
        assert (await submitted.wait_callback()).type == 5
        (post,) = await world.result_of(submitted)

        again = await menu_form(world, "Continue this track", post)  # a jamgen card: its own prompt to start from
        assert form_defaults(again)["prompt"] == "jazzy bass"
    assert fields_of(post)["Audio in"] == "continues the last 5 s of loop.ogg (0:00–0:05)"
    assert abs(decode(post.attachments[0].data).duration - 7.0) < 0.05
    assert world.fake.downloads == [loop.id], "the file was read from the message, once"


async def test_a_melody_from_an_upload_on_a_melody_model(
    world: World, tiny_melody_model_dir: Path, tmp_path: Path
) -> None:
    hum = FakeAttachment("hum.wav", "audio/wav", audio_files.tone(".wav", 4.0, rate=22_050))
    async with running_bot(world.fake, tiny_melody_model_dir, tmp_path):
        interaction = await world.generate(prompt="calm piano", duration=2, format="wav", audio=hum, mode="melody")
        (post,) = await world.result_of(interaction)
        async with journal_of(tmp_path) as store:
            record = await state_reached(store, job_of(post), State.DELIVERED)
    assert fields_of(post)["Audio in"] == "follows the melody of the first 4 s of hum.wav (0:00–0:04)"
    assert post.embeds[0]["title"].startswith("🎼 calm piano · 2 s, on the melody of hum.wav")
    assert abs(decode(post.attachments[0].data).duration - 2.0) < 0.05
    assert record.request.melody_from is not None and record.request.continue_from is None
    assert Path(record.request.melody_from).parent == tmp_path / "uploads"


# -- refusals -----------------------------------------------------------------------------------------------


async def refused_at_once(interaction: FakeInteraction) -> str:
    callback = await interaction.wait_callback()
    assert callback.type == 4 and callback.data is not None and callback.data["flags"] & EPHEMERAL, callback
    return str(callback.data["content"])


async def refused_after_reading(world: World, interaction: FakeInteraction) -> str:
    """Deferred (the download and decoding take time), then the "thinking…" message goes and the reason is private."""
    assert (await interaction.wait_callback()).type == 5
    await world.fake.wait_for(lambda: bool(interaction.followups))
    (told,) = interaction.followups
    assert told.ephemeral and interaction.original is not None and interaction.original.deleted
    return told.content


async def test_each_rejected_upload_gets_its_own_message_and_the_bot_keeps_serving(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    files = {
        "type": FakeAttachment("notes.txt", "text/plain", b"la la la"),
        "large": FakeAttachment("live.wav", "audio/wav", b"RIFF", claimed_size=30 * 1024 * 1024),
        "corrupt": FakeAttachment("song.mp3", "audio/mpeg", audio_files.corrupt()),
        "long": FakeAttachment("long.flac", "audio/flac", audio_files.long_by_header()),
        "bomb": FakeAttachment("bomb.flac", "audio/flac", audio_files.bomb(120.0)),
    }
    async with running_bot(world.fake, tiny_model_dir, tmp_path, upload_max_mb=10, upload_max_seconds=60):
        said = {
            "type": await refused_at_once(await world.generate(audio=files["type"])),
            "large": await refused_at_once(await world.generate(audio=files["large"])),
            "mode alone": await refused_at_once(await world.generate(mode="continue")),
            "no melody model": await refused_at_once(await world.generate(audio=files["corrupt"], mode="melody")),
        }
        assert world.fake.downloads == [], "the type and the size are checked before any download"
        for kind in ("corrupt", "long", "bomb"):
            said[kind] = await refused_after_reading(world, await world.generate(audio=files[kind]))
        plain = await world.fake.post_message(world.jam, world.bob, "no audio here",
                                              [FakeAttachment("cat.png", "image/png", b"\x89PNG")])
        menu = await world.fake.send_message_command("Use as melody", plain, user=world.alice, guild=world.guild)
        said["menu without audio"] = await refused_at_once(menu)

        served = await world.generate(prompt="still here", duration=1)
        (post,) = await world.result_of(served)
    assert post.embeds[0]["description"] == "still here"
    assert said == {
        "type": "notes.txt isn't an audio file jamgen reads: attach an mp3, ogg/opus, wav, flac or m4a file.",
        "large": "live.wav is 30.0 MB; uploads can be at most 10.0 MB. Cut it shorter or use a smaller format "
                 "(mp3, ogg).",
        "mode alone": "`mode` says what to do with an audio file: attach one with the `audio` option.",
        "no melody model": f"This bot serves no melody model ({tiny_model_dir}), so a file can only be continued.",
        "corrupt": "song.mp3 couldn't be read as audio: it is damaged, or not really an mp3, ogg/opus, wav, flac or "
                   "m4a file.",
        "long": "long.flac is too long: its header says 2386:05:34, and uploads can be at most 1:00. Cut out the "
                "part you want and attach that.",
        "bomb": "bomb.flac unpacks to more than 1:00 of audio from 28 KB, though its header doesn't say how long "
                "it is: it looks like a decompression bomb, so jamgen won't use it.",
        "menu without audio": "That message has no audio file to use: it needs an mp3, ogg/opus, wav, flac or m4a "
                              "attachment.",
    }
    assert not (tmp_path / "uploads").exists() or list((tmp_path / "uploads").iterdir()) == []


async def test_prepared_uploads_are_pruned_with_the_journal(tmp_path: Path) -> None:
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "used.wav").write_bytes(b"x")
    async with journal_of(tmp_path) as store:
        assert await prune(store, retention_days=1, uploads=folder) == 0
        assert (folder / "used.wav").exists()  # used within the retention
        await prune(store, retention_days=1, now=time.time() + 2 * 86400, uploads=folder)
    assert list(folder.iterdir()) == []
