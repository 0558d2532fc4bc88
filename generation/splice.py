"""Splicing a track from sections, and the codes a jam continues from.

A jam's section is generated as a continuation of the jam's tail: its file starts with that tail (the context),
decoded again from the same codes, then the new part. The whole track is the first section, then each later
section from its context boundary on, joined with a short crossfade. pydub's ``AudioSegment.append(…, crossfade=)``
is that splice. Each part starts ``crossfade`` ms before its boundary, so the overlap covers the same stretch of
music from both decodes and the track keeps its exact length.

Everything here is in memory and blocking (decode, splice, encode): call it in a worker thread.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydub import AudioSegment

from generation.encode import EncodedAudio, EncodeOptions, decode, encode
from generation.jobs import Normalization, OutputFormat

CROSSFADE_MS = 50
_INT16 = 32767.0


@dataclass(frozen=True)
class Part:
    """One section's file and how much of its start is context (seconds) heard already at the end of the track."""

    data: bytes
    context_seconds: float = 0.0


def splice(parts: Sequence[Part], crossfade_ms: int = CROSSFADE_MS) -> AudioSegment:
    """The whole track: each part from its context boundary on, crossfaded into the track so far."""
    if not parts:
        raise ValueError("nothing to splice")
    track = _segment(parts[0].data)
    for part in parts[1:]:
        segment = _segment(part.data)
        boundary = round(part.context_seconds * 1000)
        fade = min(crossfade_ms, boundary, len(track), max(0, len(segment) - boundary))
        track = track.append(segment[boundary - fade:], crossfade=fade)
    return track


def encode_segment(segment: AudioSegment, fmt: OutputFormat, max_bytes: int | None) -> EncodedAudio:
    """Encode a spliced track as ``fmt``, under ``max_bytes`` (a lower bitrate when needed; EncodeError when no
    bitrate fits). No normalisation: every section was normalised when it was made."""
    return encode(_array(segment), segment.frame_rate, EncodeOptions(fmt, None, Normalization.NONE, max_bytes))


def _segment(data: bytes) -> AudioSegment:
    wav, rate = decode(data)
    pcm = (np.clip(wav, -1.0, 1.0) * _INT16).astype("<i2")
    return AudioSegment(data=pcm.T.tobytes(), sample_width=2, frame_rate=rate, channels=wav.shape[0])


def _array(segment: AudioSegment) -> npt.NDArray[np.float32]:
    samples = np.array(segment.get_array_of_samples(), dtype=np.float32) / _INT16
    return samples.reshape(-1, segment.channels).T.copy()


# -- codes -------------------------------------------------------------------------------------------------------
def codes_bytes(codes: npt.NDArray[Any]) -> bytes:
    """``[K, T]`` integer codes as a .npy file's bytes (what a continuation reads)."""
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(codes, dtype=np.int64), allow_pickle=False)
    return out.getvalue()


def codes_of(data: bytes) -> npt.NDArray[np.int64]:
    codes = np.load(io.BytesIO(data), allow_pickle=False)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be [K, T] integers (got {codes.dtype} {codes.shape})")
    return codes.astype(np.int64)


def tail(sections: Sequence[npt.NDArray[Any]], frames: int) -> npt.NDArray[np.int64]:
    """The last ``frames`` frames of the sections' codes laid end to end (all of them when shorter)."""
    whole = np.concatenate([np.asarray(codes, dtype=np.int64) for codes in sections], axis=1)
    return whole[:, max(0, whole.shape[1] - frames):]
