"""generation.encode against the real PyAV and the real ffmpeg CLI: no mocks.

Every file is decoded twice: by PyAV in-process and by the ffmpeg CLI (through pydub)
or ffprobe, the way Discord clients and users' players will see it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import subprocess

import av
import numpy as np
import pydub
import pytest
import torch
import torchaudio

from generation.encode import CODECS, EncodedAudio, EncodeOptions, available_codecs, encode
from generation.errors import EncodeError
from generation.jobs import Normalization, OutputFormat

SR = 32000
PEAK_TARGET = 10 ** (-1 / 20)
# Lossy codecs pad to whole frames (opus 20 ms, mp3 1152 samples = 36 ms at 32 kHz, plus
# ~1100 samples of LAME encoder delay). Only trimming metadata removes that padding: Ogg
# pre-skip + end granule position, and the LAME gapless tag. Both decoders honour it and
# give the exact length here; 10 ms of slack tolerates a decoder that rounds to the
# resampler's granularity, but still fails if the padding were left in.
TOLERANCE_S = {OutputFormat.OPUS: 0.010, OutputFormat.MP3: 0.010, OutputFormat.WAV: 1 / SR, OutputFormat.FLAC: 1 / SR}
PYDUB_FORMAT = {OutputFormat.OPUS: "ogg", OutputFormat.MP3: "mp3", OutputFormat.WAV: "wav", OutputFormat.FLAC: "flac"}
FFPROBE_CODEC = {OutputFormat.OPUS: "opus", OutputFormat.MP3: "mp3", OutputFormat.WAV: "pcm_s16le",
                 OutputFormat.FLAC: "flac"}


def sine(seconds: float, amplitude: float = 0.5, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    tone = amplitude * np.sin(2 * np.pi * freq * t)
    return np.stack([tone * (1.0 - 0.3 * ch) for ch in range(channels)]).astype(np.float32)


def noise(seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((channels, int(seconds * SR)))).clip(-1, 1).astype(np.float32)


def decode_pyav(data: bytes) -> tuple[np.ndarray, int]:
    """Decoded samples as float (channels, samples), and the stream's sample rate."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.sample_rate)
        frames = [out for frame in container.decode(stream) for out in resampler.resample(frame)]
        frames += resampler.resample(None)
        return np.concatenate([f.to_ndarray() for f in frames], axis=1), stream.sample_rate


def wav_roundtrip(wav: np.ndarray, strategy: Normalization) -> np.ndarray:
    """Normalise and encode as 16-bit WAV, then decode: what the listener gets, minus lossy artefacts."""
    samples, rate = decode_pyav(encode(wav, SR, EncodeOptions(OutputFormat.WAV, normalization=strategy)).data)
    assert rate == SR
    return samples


def ffprobe(data: bytes) -> dict[str, str]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,sample_rate,channels", "-of", "json", "-"],
        input=data, capture_output=True, check=True,
    )
    return json.loads(out.stdout)["streams"][0]


def lufs(samples: np.ndarray) -> float:
    return float(torchaudio.functional.loudness(torch.from_numpy(samples).float(), SR))


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_each_format_decodes_with_pyav_and_ffmpeg(fmt: OutputFormat, channels: int) -> None:
    seconds = 2.5
    result = encode(sine(seconds, channels=channels), SR, EncodeOptions(format=fmt))
    expected_rate = 48000 if fmt is OutputFormat.OPUS else SR

    assert result.format is fmt
    assert result.sample_rate == expected_rate
    assert result.duration == pytest.approx(seconds)
    assert result.bitrate_kbps == {OutputFormat.OPUS: 96, OutputFormat.MP3: 192}.get(fmt)

    samples, rate = decode_pyav(result.data)
    assert rate == expected_rate
    assert samples.shape[0] == channels
    assert samples.shape[1] / rate == pytest.approx(seconds, abs=TOLERANCE_S[fmt])

    segment = pydub.AudioSegment.from_file(io.BytesIO(result.data), format=PYDUB_FORMAT[fmt])
    assert segment.frame_rate == expected_rate
    assert segment.channels == channels
    assert segment.frame_count() / segment.frame_rate == pytest.approx(seconds, abs=TOLERANCE_S[fmt])

    probe = ffprobe(result.data)
    assert probe["codec_name"] == FFPROBE_CODEC[fmt]
    assert int(probe["sample_rate"]) == expected_rate
    assert int(probe["channels"]) == channels


def test_decoded_audio_sounds_like_the_input() -> None:
    wav = sine(1.0, amplitude=0.5, freq=1000.0)
    for fmt in OutputFormat:
        samples, rate = decode_pyav(encode(wav, SR, EncodeOptions(format=fmt, normalization=Normalization.NONE)).data)
        spectrum = np.abs(np.fft.rfft(samples[0]))
        peak_hz = np.argmax(spectrum) * rate / samples.shape[1]
        assert peak_hz == pytest.approx(1000.0, abs=5.0), fmt
        assert np.abs(samples).max() == pytest.approx(0.5, abs=0.05), fmt


@pytest.mark.parametrize(
    ("fmt", "extension", "mime_type"),
    [
        (OutputFormat.OPUS, ".opus", "audio/ogg"),
        (OutputFormat.MP3, ".mp3", "audio/mpeg"),
        (OutputFormat.WAV, ".wav", "audio/wav"),
        (OutputFormat.FLAC, ".flac", "audio/flac"),
    ],
)
def test_extension_and_mime_type(fmt: OutputFormat, extension: str, mime_type: str) -> None:
    audio = EncodedAudio(b"", fmt, SR, 1.0, None)
    assert (audio.extension, audio.mime_type) == (extension, mime_type)


def test_all_codecs_available_in_this_build() -> None:
    assert available_codecs() == dict.fromkeys(OutputFormat, True)


@pytest.mark.parametrize("channels", [1, 2])
def test_peak_normalisation_hits_minus_one_dbfs(channels: int) -> None:
    samples = wav_roundtrip(sine(1.0, 0.1, channels), Normalization.PEAK)
    assert np.abs(samples).max() == pytest.approx(PEAK_TARGET, abs=1e-3)


def test_no_normalisation_keeps_a_quiet_signal_quiet() -> None:
    samples = wav_roundtrip(sine(1.0, 0.05), Normalization.NONE)
    assert np.abs(samples).max() == pytest.approx(0.05, abs=1e-3)


def test_no_normalisation_clips_to_full_scale() -> None:
    samples = wav_roundtrip(sine(1.0, 3.0), Normalization.NONE)
    assert np.abs(samples).max() == pytest.approx(1.0, abs=1e-3)


def test_loudness_normalisation_raises_a_quiet_signal_towards_minus_14_lufs() -> None:
    quiet = sine(3.0, 0.02)
    samples = wav_roundtrip(quiet, Normalization.LOUDNESS)
    assert lufs(quiet) < -35
    # tanh soft clipping shaves a little off the -14 LUFS target
    assert lufs(samples) == pytest.approx(-14.0, abs=1.5)
    assert np.abs(samples).max() <= 1.0


@pytest.mark.parametrize("strategy", list(Normalization))
@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_silence_encodes_to_silence(fmt: OutputFormat, strategy: Normalization) -> None:
    result = encode(np.zeros((1, SR), dtype=np.float32), SR, EncodeOptions(fmt, normalization=strategy))
    samples, _ = decode_pyav(result.data)
    assert np.isfinite(samples).all()
    assert np.abs(samples).max() < 1e-3


@pytest.mark.parametrize("samples", [1, 100, 12_799])
def test_loudness_on_clips_shorter_than_a_loudness_block_falls_back_to_peak(samples: int) -> None:
    wav = np.full((1, samples), 0.1, dtype=np.float32)
    wav[0, ::2] = -0.1
    assert np.abs(wav_roundtrip(wav, Normalization.LOUDNESS)).max() == pytest.approx(PEAK_TARGET, abs=1e-3)


@pytest.mark.parametrize("strategy", list(Normalization))
def test_nan_becomes_zero(strategy: Normalization) -> None:
    wav = sine(1.0, 0.5)
    wav[0, SR // 2 : SR // 2 + 100] = np.nan
    samples = wav_roundtrip(wav, strategy)
    assert np.isfinite(samples).all()
    assert np.abs(samples[0, SR // 2 : SR // 2 + 100]).max() == 0.0
    assert np.abs(samples).max() > 0.1  # the rest of the tone survived


def test_all_nan_is_silence() -> None:
    wav = np.full((2, SR), np.nan, dtype=np.float32)
    samples, _ = decode_pyav(encode(wav, SR, EncodeOptions(OutputFormat.OPUS)).data)
    assert np.abs(samples).max() < 1e-3


def test_lower_bitrate_gives_smaller_file() -> None:
    wav = noise(5.0)
    small = encode(wav, SR, EncodeOptions(OutputFormat.OPUS, bitrate_kbps=24))
    large = encode(wav, SR, EncodeOptions(OutputFormat.OPUS, bitrate_kbps=128))
    assert (small.bitrate_kbps, large.bitrate_kbps) == (24, 128)
    assert len(small.data) < len(large.data) / 3


@pytest.mark.parametrize(("fmt", "cap"), [(OutputFormat.OPUS, 150_000), (OutputFormat.MP3, 300_000)])
def test_byte_cap_reencodes_at_a_lower_bitrate(fmt: OutputFormat, cap: int, caplog: pytest.LogCaptureFixture) -> None:
    wav = noise(30.0)
    uncapped = encode(wav, SR, EncodeOptions(fmt, normalization=Normalization.NONE))
    assert len(uncapped.data) > cap  # the cap really forces a re-encode

    with caplog.at_level(logging.INFO, logger="generation.encode"):
        capped = encode(wav, SR, EncodeOptions(fmt, normalization=Normalization.NONE, max_bytes=cap))

    assert len(capped.data) <= cap
    assert capped.bitrate_kbps is not None and uncapped.bitrate_kbps is not None
    assert capped.bitrate_kbps < uncapped.bitrate_kbps
    assert any("re-encoding" in record.getMessage() for record in caplog.records)
    samples, rate = decode_pyav(capped.data)
    assert samples.shape[1] / rate == pytest.approx(30.0, abs=TOLERANCE_S[fmt])


@pytest.mark.parametrize("fmt", [OutputFormat.OPUS, OutputFormat.MP3])
def test_impossible_cap_raises_a_readable_error(fmt: OutputFormat) -> None:
    with pytest.raises(EncodeError) as raised:
        encode(noise(30.0), SR, EncodeOptions(fmt, max_bytes=5_000))
    message = str(raised.value)
    floor = CODECS[fmt].min_kbps
    assert "upload limit" in message and "5 KiB" in message and "shorter duration" in message
    assert f"even at {floor} kbps" in message
    assert ("opus" in message.split("kbps.")[1]) == (fmt is not OutputFormat.OPUS)  # never suggest itself
    assert "Traceback" not in message


@pytest.mark.parametrize("fmt", [OutputFormat.WAV, OutputFormat.FLAC])
def test_lossless_over_cap_raises(fmt: OutputFormat) -> None:
    with pytest.raises(EncodeError, match=r"over the 500 KiB upload limit.*opus"):
        encode(noise(30.0), SR, EncodeOptions(fmt, max_bytes=500 * 1024))


def test_lossless_under_cap_is_untouched() -> None:
    result = encode(sine(1.0), SR, EncodeOptions(OutputFormat.FLAC, max_bytes=10_000_000))
    assert result.bitrate_kbps is None
    samples, rate = decode_pyav(result.data)
    assert (samples.shape, rate) == ((1, SR), SR)


def test_missing_encoder_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    # a real lookup of an encoder that this FFmpeg (like any other) does not have
    broken = dataclasses.replace(CODECS[OutputFormat.OPUS], codec="libnosuchcodec")
    monkeypatch.setitem(CODECS, OutputFormat.OPUS, broken)
    assert available_codecs()[OutputFormat.OPUS] is False
    with pytest.raises(EncodeError, match=r"no 'libnosuchcodec' encoder.*jamgen doctor"):
        encode(sine(1.0), SR, EncodeOptions(OutputFormat.OPUS))


@pytest.mark.parametrize("shape", [(3, SR), (1, 0), (1, 2, SR)])
def test_bad_shapes_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        encode(np.zeros(shape, dtype=np.float32), SR, EncodeOptions())
