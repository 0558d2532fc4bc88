"""Audio in: every accepted format decodes to the part a job uses; hostile files are refused, each saying why."""

from __future__ import annotations

import asyncio
import os
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from generation import audio_in
from generation.audio_in import AudioRefused, Limits, Mode, Prepared, prepare
from tests import audio_files

pytestmark = pytest.mark.timeout(60)

LIMITS = Limits(max_bytes=4_000_000, max_seconds=60.0)


def read_wav(path: Path) -> tuple[int, int, np.ndarray]:
    with wave.open(str(path), "rb") as file:
        frames = file.readframes(file.getnframes())
        return file.getframerate(), file.getnchannels(), np.frombuffer(frames, dtype="<i2")


@pytest.mark.parametrize("suffix", [".mp3", ".ogg", ".opus", ".wav", ".flac", ".m4a"])
async def test_each_format_gives_the_last_ten_seconds_at_32_khz(suffix: str, tmp_path: Path) -> None:
    data = audio_files.tone(suffix, 14.0, channels=2)
    prepared = await prepare(data, f"song{suffix}", Mode.CONTINUE, channels=1, folder=tmp_path, limits=LIMITS)
    rate, channels, samples = read_wav(prepared.path)
    assert (rate, channels) == (32_000, 1)
    assert abs(len(samples) / rate - 10.0) < 0.01
    assert abs(prepared.start - 4.0) < 0.1 and abs(prepared.end - 14.0) < 0.1  # codecs pad a few ms
    assert np.abs(samples).max() > 8000, "the tone made it through"
    assert prepared.describe() == f"continues the last 10 s of song{suffix} (0:04–0:14)"
    assert list(tmp_path.iterdir()) == [prepared.path], "the upload itself is not kept"


async def test_stereo_is_kept_for_a_stereo_model_and_a_short_file_is_used_whole(tmp_path: Path) -> None:
    data = audio_files.tone(".flac", 4.0, channels=2, rate=48_000)
    prepared = await prepare(data, "loop.flac", Mode.CONTINUE, channels=2, folder=tmp_path, limits=LIMITS)
    rate, channels, samples = read_wav(prepared.path)
    assert (rate, channels) == (32_000, 2) and len(samples) == 4 * 32_000 * 2
    assert (prepared.start, prepared.end) == (0.0, 4.0)


async def test_the_continuation_part_is_the_end_of_the_upload(tmp_path: Path) -> None:
    """The tone's pitch steps up each second: the kept part must match the end of the whole decoded file."""
    data = audio_files.tone(".wav", 25.0, rate=32_000)
    prepared = await prepare(data, "a.wav", Mode.CONTINUE, channels=1, folder=tmp_path, limits=LIMITS)
    (tmp_path / "whole.wav").write_bytes(data)
    _, _, whole = read_wav(tmp_path / "whole.wav")
    _, _, part = read_wav(prepared.path)
    assert np.array_equal(part, whole[-len(part):])
    assert prepared.describe() == "continues the last 10 s of a.wav (0:15–0:25)"


async def test_a_melody_is_the_first_thirty_seconds(tmp_path: Path) -> None:
    data = audio_files.tone(".mp3", 40.0)
    prepared = await prepare(data, "hum.mp3", Mode.MELODY, channels=1, folder=tmp_path, limits=LIMITS)
    rate, _, samples = read_wav(prepared.path)
    assert len(samples) == 30 * rate
    assert prepared.describe() == "follows the melody of the first 30 s of hum.mp3 (0:00–0:30)"


async def test_the_same_audio_twice_is_one_file(tmp_path: Path) -> None:
    data = audio_files.tone(".ogg", 3.0)
    first = await prepare(data, "x.ogg", Mode.CONTINUE, channels=1, folder=tmp_path, limits=LIMITS)
    second = await prepare(data, "y.ogg", Mode.CONTINUE, channels=1, folder=tmp_path, limits=LIMITS)
    assert first.path == second.path and second.name == "y.ogg"


# -- refusals ---------------------------------------------------------------------------------------------


def test_a_wrong_type_or_size_is_refused_before_download() -> None:
    with pytest.raises(AudioRefused, match=r"notes\.txt isn't an audio file jamgen reads: attach an mp3"):
        audio_in.check_upload("notes.txt", "text/plain", 100, LIMITS)
    with pytest.raises(AudioRefused, match=r"big\.wav is 4\.8 MB; uploads can be at most 3\.8 MB"):
        audio_in.check_upload("big.wav", "audio/x-wav", 5_000_000, LIMITS)
    with pytest.raises(AudioRefused, match="is empty"):
        audio_in.check_upload("nothing.mp3", None, 0, LIMITS)
    audio_in.check_upload("voice-message", "audio/ogg", 100, LIMITS)  # no extension: the stated type counts
    audio_in.check_upload("SONG.MP3", None, 100, LIMITS)


async def refusal(data: bytes, name: str, tmp_path: Path, mode: Mode = Mode.CONTINUE) -> str:
    with pytest.raises(AudioRefused) as caught:
        await prepare(data, name, mode, channels=1, folder=tmp_path, limits=LIMITS)
    assert list(tmp_path.iterdir()) == [], "nothing is left behind"
    return str(caught.value)


async def test_corrupt_data_is_refused(tmp_path: Path) -> None:
    assert await refusal(audio_files.corrupt(), "song.mp3", tmp_path) == (
        "song.mp3 couldn't be read as audio: it is damaged, or not really an mp3, ogg/opus, wav, flac or m4a file."
    )


async def test_a_playlist_dressed_as_audio_is_never_followed(tmp_path: Path) -> None:
    """FFmpeg would open what an HLS playlist or a concat list names (other files, URLs): only audio demuxers run."""
    secret = tmp_path.parent / "secret.wav"
    secret.write_bytes(audio_files.tone(".wav", 2.0))
    for text in (f"#EXTM3U\n#EXTINF:2,\nfile://{secret}\n", f"ffconcat version 1.0\nfile '{secret}'\n"):
        message = await refusal(text.encode(), "song.ogg", tmp_path)
        assert "couldn't be read as audio" in message


async def test_a_header_that_claims_a_huge_duration_is_refused_without_decoding(tmp_path: Path) -> None:
    message = await refusal(audio_files.long_by_header(), "long.flac", tmp_path)
    assert message.startswith("long.flac is too long: its header says 2386:05:34, and uploads can be at most 1:00.")


async def test_a_decompression_bomb_stops_at_the_cap(tmp_path: Path) -> None:
    data = audio_files.bomb(300.0)  # 5 minutes in 59 KB, and no length in its header
    started = time.monotonic()
    message = await refusal(data, "bomb.flac", tmp_path)
    assert time.monotonic() - started < 10
    assert message.startswith("bomb.flac unpacks to more than 1:00 of audio from 59 KB, though its header "
                              "doesn't say how long it is: it looks like a decompression bomb")


async def test_a_bomb_used_as_a_melody_is_read_to_thirty_seconds_only(tmp_path: Path) -> None:
    prepared = await prepare(audio_files.bomb(300.0), "b.flac", Mode.MELODY, channels=1, folder=tmp_path,
                             limits=LIMITS)
    assert prepared.seconds == 30.0


async def test_too_short_and_oversized_data_are_refused(tmp_path: Path) -> None:
    short = audio_files.tone(".wav", 0.5)
    assert await refusal(short, "blip.wav", tmp_path) == "blip.wav holds 0.5 s of audio; jamgen needs at least 1 s."
    big = b"\0" * (LIMITS.max_bytes + 1)
    assert "is larger than 3.8 MB" in await refusal(big, "big.wav", tmp_path)


async def test_a_decoder_that_stalls_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = audio_files.tone(".wav", 2.0)
    fake_ffmpeg = tmp_path / "bin" / "ffmpeg"
    fake_ffmpeg.parent.mkdir()
    fake_ffmpeg.write_text("#!/bin/sh\nexec sleep 30\n")
    fake_ffmpeg.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_ffmpeg.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(audio_in, "DECODE_TIMEOUT", 0.5)
    folder = tmp_path / "uploads"
    started = time.monotonic()
    with pytest.raises(AudioRefused, match="took too long to decode"):
        await prepare(data, "slow.wav", Mode.CONTINUE, channels=1, folder=folder,
                      limits=LIMITS)
    assert time.monotonic() - started < 5
    assert list(folder.iterdir()) == []


async def test_many_uploads_at_once_decode_two_at_a_time(tmp_path: Path) -> None:
    data = audio_files.tone(".mp3", 3.0)
    results = await asyncio.gather(*(
        prepare(data, f"{n}.mp3", Mode.CONTINUE, channels=1, folder=tmp_path, limits=LIMITS) for n in range(5)
    ))
    assert all(isinstance(result, Prepared) for result in results)
    assert len({result.path for result in results}) == 1


def test_old_prepared_files_are_pruned(tmp_path: Path) -> None:
    old, new = tmp_path / "old.wav", tmp_path / "new.wav"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (1000.0, 1000.0))
    assert audio_in.prune_files(tmp_path, before=time.time() - 60) == 1
    assert list(tmp_path.iterdir()) == [new]


def test_a_continuation_adds_what_was_asked_even_past_the_window() -> None:
    assert audio_in.extension_seconds(8) == 8
    assert audio_in.extension_seconds(30) == 30, "context + 30 s is past the 30 s window: it slides"
    assert audio_in.extension_seconds(0.2) == audio_in.MIN_SECONDS


def test_the_card_says_the_part_to_a_tenth_of_a_second(tmp_path: Path) -> None:
    part = Prepared(tmp_path / "x.wav", "a.mp3", Mode.CONTINUE, start=3723.0, end=3727.5)
    assert part.describe() == "continues the last 4.5 s of a.mp3 (1:02:03–1:02:07)"
