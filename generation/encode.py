"""Turn a generated waveform into a small file people can play: Opus, MP3, WAV or FLAC.

Everything runs in-process with PyAV (the FFmpeg bindings audiocraft already depends
on) into memory, on the CPU. :func:`encode` is a pure, blocking function: the engine
calls it from a worker thread. Lossy files that exceed a byte cap (Discord's upload
limit) are re-encoded at a lower bitrate until they fit.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from generation.errors import EncodeError
from generation.jobs import Normalization, OutputFormat

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5  # encodes in all, the first included, before giving up on a byte cap
SIZE_SAFETY = 0.92  # aim this far under the cap: container overhead and VBR overshoot
PEAK_HEADROOM_DB = 1.0  # audiocraft's audio_write default
LOUDNESS_HEADROOM_DB = 14.0  # audiocraft's audio_write default (target -14 LUFS)
LOUDNESS_MIN_SECONDS = 0.4  # one BS.1770 gating block


@dataclass(frozen=True)
class _Codec:
    """How one output format is written: container, encoder and bitrates."""

    container: str
    codec: str
    extension: str
    mime_type: str
    rate: int | None = None  # forced sample rate; None keeps the input's when the codec allows it
    default_kbps: int | None = None  # None: lossless, the bitrate is not ours to choose
    min_kbps: int | None = None
    steps_kbps: tuple[int, ...] = ()  # the only bitrates the codec takes, when it has such a list


_MP3_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)

CODECS: dict[OutputFormat, _Codec] = {
    OutputFormat.OPUS: _Codec("ogg", "libopus", ".opus", "audio/ogg", rate=48000, default_kbps=96, min_kbps=12),
    OutputFormat.MP3: _Codec("mp3", "libmp3lame", ".mp3", "audio/mpeg", default_kbps=192, min_kbps=32,
                             steps_kbps=_MP3_KBPS),
    OutputFormat.WAV: _Codec("wav", "pcm_s16le", ".wav", "audio/wav"),
    OutputFormat.FLAC: _Codec("flac", "flac", ".flac", "audio/flac"),
}


@dataclass(frozen=True)
class EncodeOptions:
    format: OutputFormat = OutputFormat.OPUS
    bitrate_kbps: int | None = None  # None: the format's default (opus 96, mp3 192); ignored for lossless
    normalization: Normalization = Normalization.LOUDNESS
    max_bytes: int | None = None  # byte cap, e.g. Discord's interaction.filesize_limit


@dataclass(frozen=True)
class EncodedAudio:
    data: bytes
    format: OutputFormat
    sample_rate: int  # of the encoded stream (opus is always 48000)
    duration: float  # seconds of audio
    bitrate_kbps: int | None  # the bitrate finally used; None for lossless formats
    # the job's EnCodec codes, int64 [K, T], its prompt's included: only when the request keeps them
    codes: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def extension(self) -> str:
        return CODECS[self.format].extension

    @property
    def mime_type(self) -> str:
        return CODECS[self.format].mime_type


def available_codecs() -> dict[OutputFormat, bool]:
    """Whether this PyAV build has the encoder each output format needs."""
    return {fmt: _has_encoder(spec.codec) for fmt, spec in CODECS.items()}


def encode(wav: npt.NDArray[np.floating[Any]], sample_rate: int, options: EncodeOptions) -> EncodedAudio:
    """Normalise ``wav`` (float, shape ``(channels, samples)``) and encode it as ``options`` asks.

    Raises :class:`EncodeError` when the codec is missing or no bitrate fits ``options.max_bytes``.
    """
    audio = _as_planar(wav, sample_rate)
    audio = normalize(audio, sample_rate, options.normalization)
    spec = CODECS[options.format]
    _require_encoder(options.format, spec)
    kbps = None if spec.default_kbps is None else _snap(spec, options.bitrate_kbps or spec.default_kbps)
    data, rate = _encode_once(audio, sample_rate, spec, kbps)
    for _ in range(MAX_ATTEMPTS - 1):
        if options.max_bytes is None or len(data) <= options.max_bytes:
            break
        lower = _smaller_bitrate(spec, kbps, len(data), options.max_bytes)
        if lower is None:
            break
        kbps = lower
        logger.info("%s is %d bytes, over the %d byte cap: re-encoding at %d kbps",
                    options.format.value, len(data), options.max_bytes, kbps)
        data, rate = _encode_once(audio, sample_rate, spec, kbps)
    if options.max_bytes is not None and len(data) > options.max_bytes:
        raise EncodeError(_too_big_message(options.format, len(data), options.max_bytes, kbps))
    return EncodedAudio(data, options.format, rate, audio.shape[1] / sample_rate, kbps)


def normalize(wav: npt.NDArray[np.float32], sample_rate: int, strategy: Normalization) -> npt.NDArray[np.float32]:
    """Normalise as audiocraft's ``audio_write`` does; the result lies in [-1, 1].

    NaN becomes 0. Silence is left silent, and clips shorter than one loudness
    measurement block (400 ms) are peak-normalised instead of loudness-normalised.
    Peak and none are plain numpy (audiocraft's formulas); only loudness needs torch
    (audiocraft's ``normalize_audio``, BS.1770 through torchaudio). Torch work belongs on
    the generation thread: a second thread running torch kernels gives libgomp a second
    thread team, and then every decoding step pays for it (measured: 16 s -> 20 s for a
    batch on this project's 2-core machine). The engine normalises there, and encodes
    with :attr:`Normalization.NONE`.
    """
    audio = np.nan_to_num(np.asarray(wav, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    strategy = _effective_strategy(strategy, silent=peak == 0.0, seconds=audio.shape[-1] / sample_rate)
    if strategy is Normalization.PEAK:
        audio = audio * np.float32(10 ** (-PEAK_HEADROOM_DB / 20) / peak)
    elif strategy is Normalization.LOUDNESS:
        audio = _loudness(audio, sample_rate)
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)


def _loudness(audio: npt.NDArray[np.float32], sample_rate: int) -> npt.NDArray[np.float32]:
    import torch  # imported here: heavy, and only needed for loudness
    from audiocraft.data.audio_utils import normalize_audio

    tensor = normalize_audio(
        torch.from_numpy(audio), strategy="loudness", sample_rate=sample_rate,
        loudness_headroom_db=LOUDNESS_HEADROOM_DB, loudness_compressor=True,
    )
    return tensor.numpy()


def _effective_strategy(strategy: Normalization, *, silent: bool, seconds: float) -> Normalization:
    if silent:  # peak-scaling silence would divide by zero
        return Normalization.NONE
    if strategy is Normalization.LOUDNESS and seconds < LOUDNESS_MIN_SECONDS:
        return Normalization.PEAK  # BS.1770 loudness needs at least one 400 ms block
    return strategy


def _as_planar(wav: npt.NDArray[np.floating[Any]], sample_rate: int) -> npt.NDArray[np.float32]:
    audio = np.asarray(wav, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] == 0:
        raise ValueError(f"expected audio of shape (1 or 2 channels, samples), got {audio.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    return np.ascontiguousarray(audio)


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (ValueError, av.AVError):  # UnknownCodecError is a ValueError
        return False
    return True


def _require_encoder(fmt: OutputFormat, spec: _Codec) -> None:
    if not _has_encoder(spec.codec):
        others = ", ".join(f.value for f, ok in available_codecs().items() if ok) or "none"
        raise EncodeError(
            f"This server cannot make {fmt.value} files: its FFmpeg has no '{spec.codec}' encoder. "
            f"Ask the bot's admin to install FFmpeg with {spec.codec} (and rebuild PyAV against it), "
            f"then run `jamgen doctor` to check. Formats that work now: {others}."
        )


def _encode_once(audio: npt.NDArray[np.float32], sample_rate: int, spec: _Codec,
                 kbps: int | None) -> tuple[bytes, int]:
    """Encode planar float audio with one codec at one bitrate; return the bytes and their sample rate."""
    buffer = io.BytesIO()
    rate = _output_rate(spec, sample_rate)
    try:
        with av.open(buffer, mode="w", format=spec.container) as container:
            stream = container.add_stream(spec.codec, rate=rate)
            context = stream.codec_context
            context.layout = _layout(audio)
            context.format = av.Codec(spec.codec, "w").audio_formats[0]
            if kbps is not None:
                context.bit_rate = kbps * 1000
            context.open()
            for frame in _frames(audio, sample_rate, context.format.name, rate, context.frame_size):
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    except av.AVError as exc:
        logger.exception("PyAV failed to encode %s", spec.codec)
        raise EncodeError(f"The audio could not be encoded with {spec.codec}; please try another format.") from exc
    return buffer.getvalue(), rate


def _frames(audio: npt.NDArray[np.float32], sample_rate: int, sample_format: str, rate: int,
            frame_size: int) -> Iterator[av.AudioFrame]:
    """Convert to the encoder's sample format and rate, in frames of the size it expects."""
    source = av.AudioFrame.from_ndarray(audio, format="fltp", layout=_layout(audio))
    source.sample_rate = sample_rate
    source.pts = 0
    resampler = av.AudioResampler(format=sample_format, layout=_layout(audio), rate=rate,
                                  frame_size=frame_size or None)
    yield from resampler.resample(source)
    yield from resampler.resample(None)


def _layout(audio: npt.NDArray[np.float32]) -> str:
    return "mono" if audio.shape[0] == 1 else "stereo"


def _output_rate(spec: _Codec, sample_rate: int) -> int:
    if spec.rate is not None:
        return spec.rate
    allowed = av.Codec(spec.codec, "w").audio_rates
    if not allowed or sample_rate in allowed:
        return sample_rate
    higher = [int(r) for r in allowed if r >= sample_rate]
    return min(higher) if higher else int(max(allowed))


def _snap(spec: _Codec, kbps: int) -> int:
    """The closest bitrate the codec takes, at most ``kbps`` (and at least its floor)."""
    floor = spec.min_kbps or 1
    if spec.steps_kbps:
        fitting = [step for step in spec.steps_kbps if step <= kbps]
        return max(fitting) if fitting else spec.steps_kbps[0]
    return max(kbps, floor)


def _smaller_bitrate(spec: _Codec, kbps: int | None, size: int, max_bytes: int) -> int | None:
    """A bitrate likely to fit ``max_bytes``, or ``None`` when the format cannot go lower."""
    if kbps is None or spec.min_kbps is None or kbps <= spec.min_kbps:
        return None
    estimate = int(kbps * max_bytes / size * SIZE_SAFETY)
    lower = _snap(spec, min(estimate, kbps - 1))
    return max(lower, spec.min_kbps) if lower < kbps else None


def _too_big_message(fmt: OutputFormat, size: int, max_bytes: int, kbps: int | None) -> str:
    what = f"The {fmt.value} file would be {_human(size)}, over the {_human(max_bytes)} upload limit"
    if kbps is None:
        return f"{what}. Choose a shorter duration, or a compressed format such as opus."
    tip = "Choose a shorter duration." if fmt is OutputFormat.OPUS else "Choose a shorter duration, or opus."
    return f"{what}, even at {kbps} kbps. {tip}"


def _human(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MiB"
    return f"{size / 1024:.0f} KiB"


_INT_SCALE = {"s16": 2.0**15, "s16p": 2.0**15, "s32": 2.0**31, "s32p": 2.0**31, "u8": 2.0**7, "u8p": 2.0**7}


def decode(data: bytes) -> tuple[npt.NDArray[np.float32], int]:
    """An encoded file back to float32 ``(channels, samples)`` in [-1, 1], and its sample rate."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        channels = stream.codec_context.channels
        blocks = []
        for frame in container.decode(stream):
            block = frame.to_ndarray().astype(np.float32)
            if not frame.format.is_planar:  # interleaved: (1, samples * channels)
                block = block.reshape(-1, channels).T
            if frame.format.name.startswith("u8"):
                block -= 128.0
            blocks.append(block / _INT_SCALE.get(frame.format.name, 1.0))
    samples = np.concatenate(blocks, axis=1) if blocks else np.zeros((channels, 0), np.float32)
    return samples, rate


def probe(data: bytes, fmt: OutputFormat) -> EncodedAudio:
    """Describe an encoded file (a kept one, re-delivered after a restart)."""
    wav, rate = decode(data)
    kbps = None if fmt.lossless else round(len(data) * 8 / 1000 / max(wav.shape[1] / rate, 1e-3))
    return EncodedAudio(data, fmt, rate, wav.shape[1] / rate, kbps)


def shrink(audio: EncodedAudio, max_bytes: int) -> EncodedAudio:
    """Re-encode ``audio`` to fit ``max_bytes``: a lower bitrate; a lossless file becomes Opus."""
    wav, rate = decode(audio.data)
    fmt = OutputFormat.OPUS if audio.format.lossless else audio.format
    bitrate = None if audio.format.lossless else audio.bitrate_kbps
    return encode(wav, rate, EncodeOptions(fmt, bitrate, Normalization.NONE, max_bytes))
