"""How a track is cut into the model's windows, and what it is charged (no torch: the bot uses it too).

MusicGen attends over at most ``max_duration`` seconds, its *window* (30 s). A longer track
is generated as audiocraft's ``MusicGen.generate`` does (``_generate_tokens``): windows
``extend_stride`` seconds apart, each prompted with the last ``window - stride`` seconds
of the one before (:mod:`generation.backends.sliding` runs them). Only the new frames of
each window are decoded step by step (a prompt is prefilled), so a track's decode work is
about its duration whatever its windows: throughput and ETAs count seconds of track.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MODEL_WINDOW = 30.0  # seconds MusicGen renders in one pass (every released model's max_duration)
EXTEND_STRIDE = 18.0  # seconds between windows: audiocraft's default ``extend_stride``
CHARGE_UNIT = 30.0  # seconds of track that count one request against the per-user rate


@dataclass(frozen=True)
class Window:
    """One pass of the model over part of a track, in frames."""

    offset: int  # the track frame it starts at
    frames: int  # its frames, prompt included
    prompt: int  # frames at its start that are given, not sampled


def stride_frames(stride: float, frame_rate: float, window: int) -> int:
    """``stride`` seconds in frames, as audiocraft counts them; it must be shorter than the window."""
    frames = int(frame_rate * stride)
    if not 0 < frames < window:
        raise ValueError(f"the stride ({stride:g} s) must be positive and shorter than the {window}-frame window")
    return frames


def plan(total: int, window: int, stride: int, prompt: int = 0) -> tuple[Window, ...]:
    """The windows of a track of ``total`` frames whose first ``prompt`` frames are given.

    audiocraft's ``_generate_tokens``: one pass when the track fits in the window; else
    passes of at most ``window`` frames, ``stride`` frames apart, each with the previous
    pass's last ``window - stride`` frames as its prompt, while they end before ``total``.
    """
    if not 0 <= prompt < total or window < 1:
        raise ValueError(f"a track of {total} frames with a {prompt}-frame prompt in a {window}-frame window")
    if total <= window:
        return (Window(0, total, prompt),)
    windows: list[Window] = []
    offset = 0
    while offset + prompt < total:
        frames = min(total - offset, window)
        windows.append(Window(offset, frames, prompt))
        prompt, offset = max(0, frames - stride), offset + stride
    return tuple(windows)


def charge(duration: float) -> int:
    """What a request of ``duration`` seconds counts against the per-user rate: its 30 s units, at least one."""
    return max(1, math.ceil(duration / CHARGE_UNIT - 1e-9))
