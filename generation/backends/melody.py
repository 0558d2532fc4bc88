"""Melody conditioning inputs: reading a melody file, and making its chroma reproducible.

audiocraft's ``ChromaStemConditioner`` separates the melody's stems with demucs, whose
``apply_model`` shifts the audio by a random offset (up to half a second) drawn from
Python's global ``random`` module. The same melody therefore gives a different condition
from one job to the next unless that draw is seeded: :func:`seeded_python_random` seeds it
for one job and puts the previous state back afterwards. A track past the model's window
computes its melody condition again for each window, as audiocraft does; :class:`CarriedRandom`
lets each window's draws go on from the last one's, as with stock audiocraft seeded once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from generation.errors import MelodyUnreadable

log = logging.getLogger(__name__)

MAX_MELODY_SECONDS = 30.0  # MusicGen's melody models are trained on 30 s; audiocraft cuts the chroma there


class CarriedRandom:
    """One job's own state of Python's global ``random``, carried from one block of its work to the next.

    The global generator is shared by the whole process: run the job's blocks on one thread
    with nothing else drawing from ``random`` meanwhile.
    """

    def __init__(self, seed: int) -> None:
        self._state = random.Random(seed).getstate()  # what ``random.seed(seed)`` leaves

    @contextmanager
    def drawing(self) -> Iterator[None]:
        """In the block, the global ``random`` goes on from the job's last block; after it, as it was before."""
        outside = random.getstate()
        random.setstate(self._state)
        try:
            yield
        finally:
            self._state = random.getstate()
            random.setstate(outside)


@contextmanager
def seeded_python_random(seed: int) -> Iterator[None]:
    """Seed Python's global ``random`` for the block, then restore the state it had before."""
    with CarriedRandom(seed).drawing():
        yield


_NOT_FOUND = "The melody file could not be found. Please attach it again."
_NOT_AUDIO = "The melody file could not be read as audio. Please attach a WAV, MP3, OGG or FLAC file."
_NO_SOUND = "The melody file has no audio in it. Please attach a file with some sound."


def _has_audio_stream(path: str) -> bool:
    """Whether FFmpeg sees an audio stream in the file (one that decoded to nothing is then empty, not foreign)."""
    import av

    try:
        with av.open(path) as container:
            return any(stream.codec_context.sample_rate for stream in container.streams.audio)
    except Exception:  # PyAV raises a different error per container problem
        return False


def read_melody(path: str, sample_rate: int) -> torch.Tensor:
    """The first 30 s at most of the audio file at ``path``, mono at ``sample_rate``: float32 [1, samples].

    Raises :class:`MelodyUnreadable` for a missing file, one that is not audio, or one with no sound in it.
    """
    from audiocraft.data.audio import audio_read
    from audiocraft.data.audio_utils import convert_audio

    file = Path(path)
    if not file.is_file():
        log.info("melody file %s does not exist", path)
        raise MelodyUnreadable(_NOT_FOUND)
    if file.stat().st_size == 0:
        log.info("melody file %s is empty", path)
        raise MelodyUnreadable(_NO_SOUND)
    try:
        wav, file_rate = audio_read(path, duration=MAX_MELODY_SECONDS)
    except Exception as exc:  # soundfile, PyAV and audiocraft's own asserts each raise their own errors
        log.info("melody file %s could not be decoded: %r", path, exc)
        raise MelodyUnreadable(_NO_SOUND if _has_audio_stream(path) else _NOT_AUDIO) from exc
    if wav.dim() != 2 or wav.shape[-1] <= 1:  # audiocraft takes a 1-sample melody for "no melody"
        log.info("melody file %s holds no audio (shape %s)", path, tuple(wav.shape))
        raise MelodyUnreadable(_NO_SOUND)
    mono = convert_audio(wav.float(), file_rate, sample_rate, 1)
    return mono[:, : int(MAX_MELODY_SECONDS * sample_rate)].contiguous()
