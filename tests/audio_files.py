"""Audio files for upload tests, made with FFmpeg: honest ones in every accepted format, and hostile ones."""

from __future__ import annotations

import random
import subprocess
import tempfile
from pathlib import Path

FLAC_TOTAL_SAMPLES = slice(18, 26)  # "fLaC", the STREAMINFO header, 10 bytes, then rate/channels/bits/total samples
TOTAL_MASK = (1 << 36) - 1

CODECS = {".opus": ["-c:a", "libopus"], ".ogg": ["-c:a", "libvorbis"], ".m4a": ["-c:a", "aac"]}


def _ffmpeg(source: list[str], suffix: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / f"out{suffix}"
        subprocess.run(["ffmpeg", "-v", "error", "-y", *source, *CODECS.get(suffix, []), str(out)],
                       check=True, timeout=120)
        return out.read_bytes()


def tone(suffix: str, seconds: float, *, rate: int = 44_100, channels: int = 1, frequency: float = 440.0) -> bytes:
    """A sine tone whose pitch rises each second (so that where a part comes from shows), in ``suffix``'s format."""
    expression = f"sin(2*PI*{frequency}*(1+floor(t)/8)*t)*0.5"
    expressions = "|".join([expression] * channels)
    return _ffmpeg(["-f", "lavfi", "-i", f"aevalsrc={expressions}:s={rate}:d={seconds}"], suffix)


def silence_flac(seconds: float, rate: int = 8_000) -> bytes:
    return _ffmpeg(["-f", "lavfi", "-i", f"anullsrc=r={rate}:cl=mono", "-t", str(seconds)], ".flac")


def _with_total_samples(flac: bytes, total: int) -> bytes:
    data = bytearray(flac)
    assert data[:4] == b"fLaC"
    fields = int.from_bytes(data[FLAC_TOTAL_SAMPLES], "big")
    data[FLAC_TOTAL_SAMPLES] = ((fields & ~TOTAL_MASK) | total).to_bytes(8, "big")
    return bytes(data)


def long_by_header() -> bytes:
    """One second of FLAC whose header claims 2^36 samples: about 99 days at 8 kHz."""
    return _with_total_samples(silence_flac(1.0), TOTAL_MASK)


def bomb(seconds: float) -> bytes:
    """``seconds`` of silence, a few hundred bytes a second, whose header does not say how long it is."""
    return _with_total_samples(silence_flac(seconds), 0)


def corrupt() -> bytes:
    """Bytes that no demuxer takes for audio."""
    return random.Random(7).randbytes(20_000)
