"""Placeholder until the melody helpers land (seeded demucs, melody reading)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded_python_random(seed: int) -> Iterator[None]:
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def read_melody(path: str, sample_rate: int, channels: int) -> torch.Tensor:
    from audiocraft.data.audio import audio_read
    from audiocraft.data.audio_utils import convert_audio

    wav, rate = audio_read(path, duration=30.0)
    return convert_audio(wav.float(), rate, sample_rate, channels)
