"""Splicing a jam's sections (pydub's crossfade at the context boundary) and the codes a section continues."""

from __future__ import annotations

import numpy as np
import pytest

from generation.encode import EncodeOptions, decode, encode
from generation.jobs import Normalization, OutputFormat
from generation.splice import CROSSFADE_MS, Part, codes_bytes, codes_of, encode_segment, splice, tail

RATE = 32000


def tone(seconds: float, hz: float, start: float = 0.0) -> np.ndarray:
    t = start + np.arange(round(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None]


def wav_file(samples: np.ndarray) -> bytes:
    return encode(samples, RATE, EncodeOptions(OutputFormat.WAV, None, Normalization.NONE)).data


def test_each_part_is_spliced_at_its_context_boundary_and_the_track_keeps_its_length() -> None:
    first = tone(2.0, 220)
    second = np.concatenate([tone(0.5, 220, start=1.5), tone(1.0, 440)], axis=1)  # 0.5 s of context, then 1 s new
    third = np.concatenate([tone(0.25, 440, start=0.75), tone(0.75, 880)], axis=1)
    track = splice([Part(wav_file(first)), Part(wav_file(second), 0.5), Part(wav_file(third), 0.25)])
    assert len(track) == 2000 + 1000 + 750  # ms: each part adds its new music only
    samples = np.array(track.get_array_of_samples(), dtype=np.float32) / 32767
    second_new = samples[round(2.1 * RATE): round(2.9 * RATE)]  # after the crossfade, before the next
    np.testing.assert_allclose(second_new, tone(0.8, 440, start=0.1)[0], atol=2e-4)
    fade = samples[round(2.0 * RATE) - round(CROSSFADE_MS / 1000 * RATE): round(2.0 * RATE)]
    assert np.max(np.abs(fade)) > 0.1  # the crossfade mixes both decodes of the boundary: no gap, no click to 0


def test_a_spliced_track_is_encoded_under_the_byte_cap() -> None:
    track = splice([Part(wav_file(tone(3.0, 330))), Part(wav_file(tone(3.0, 330, start=2.0)), 1.0)])
    audio = encode_segment(track, OutputFormat.OPUS, max_bytes=30_000)
    assert len(audio.data) <= 30_000 and audio.duration == pytest.approx(5.0, abs=0.05)
    wav, rate = decode(audio.data)
    assert rate == 48000 and wav.shape[0] == 1


def test_stereo_parts_stay_stereo() -> None:
    left_right = np.concatenate([tone(1.0, 220), tone(1.0, 330)])
    track = splice([Part(wav_file(left_right)), Part(wav_file(left_right), 0.5)])
    assert track.channels == 2 and len(track) == 1500


def test_nothing_to_splice_is_an_error() -> None:
    with pytest.raises(ValueError, match="nothing"):
        splice([])


def test_the_tail_is_the_last_frames_of_the_sections_end_to_end() -> None:
    a, b = np.arange(12).reshape(2, 6), np.arange(100, 108).reshape(2, 4)
    np.testing.assert_array_equal(tail([a, b], 5), np.concatenate([a, b], axis=1)[:, -5:])
    np.testing.assert_array_equal(tail([a], 50), a)  # shorter than asked: all of it
    assert codes_of(codes_bytes(b)).tolist() == b.tolist()
    with pytest.raises(ValueError, match=r"\[K, T\]"):
        codes_of(codes_bytes(np.arange(3)))
