"""Extend a clip: the plan of a continuation job, which the decode loop then runs like any job.

A continuation job names an audio file and how many seconds to add. The last few
seconds of the clip (:data:`EXTEND_CONTEXT_SECONDS` at most; less when that and the new
part would just overflow the model's window) are the audio prompt. When the new part
alone nearly fills the window, the whole context is kept and the track slides past the
window (:mod:`generation.backends.sliding`), as audiocraft's ``generate_continuation``
does for a duration over ``max_duration``. The prompt's tokens are prefilled into the job's
own caches (:mod:`generation.backends.streams`) and the model goes on from there, with
the same tokens as audiocraft's ``generate_continuation`` for the same seed. The result
is the whole original clip followed by the new part only, so the user's clip is kept
sample for sample and the model's re-synthesis of the context is dropped.

A job may give codes instead of audio (``continue_codes``: EnCodec codes [K, T], as a job
that keeps its codes hands them back). They are cut by the same plan and are the prompt as
they are (no encoding, so continuing a track's codes never drifts); the result is the codes
heard, decoded, followed by the new part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from generation.errors import JobFailed, is_out_of_memory

if TYPE_CHECKING:
    from audiocraft.models import MusicGen

log = logging.getLogger(__name__)

EXTEND_CONTEXT_SECONDS = 10.0  # how much of the clip's end the model hears
MIN_CONTEXT_SECONDS = 1.0  # below this the model's window is too full to continue anything


class ContinuationError(JobFailed):
    """A clip could not be extended; the message is for the person who asked."""


@dataclass(frozen=True)
class Plan:
    """How a clip is cut and how long the model's pass is, in frames and samples."""

    context_frames: int
    new_frames: int
    hop: int  # audio samples per frame

    @property
    def context_samples(self) -> int:
        return self.context_frames * self.hop

    @property
    def total_frames(self) -> int:
        return self.context_frames + self.new_frames


def read_clip(path: str, sample_rate: int, channels: int) -> torch.Tensor:
    """The clip at ``path`` as float32 [channels, samples] at ``sample_rate``."""
    from audiocraft.data.audio import audio_read
    from audiocraft.data.audio_utils import convert_audio

    if not Path(path).is_file():  # deleted while the job waited
        raise ContinuationError("The clip to extend no longer exists (it may have been cleaned up).")
    try:
        wav, rate = audio_read(path)
        wav = convert_audio(wav.float(), rate, sample_rate, channels)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise
        log.warning("cannot read the clip %s", path, exc_info=True)
        raise ContinuationError("The clip to extend could not be read: it is not an audio file we can decode.") from exc
    if wav.shape[-1] == 0 or not torch.isfinite(wav).all():
        raise ContinuationError("The clip to extend holds no usable audio.")
    return wav


def read_codes(path: str, codebooks: int, cardinality: int) -> torch.Tensor:
    """The codes at ``path`` (a ``.npy`` file) as int64 [codebooks, frames], each below ``cardinality``."""
    if not Path(path).is_file():
        raise ContinuationError("The codes to extend no longer exist (they may have been cleaned up).")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        log.warning("cannot read the codes %s", path, exc_info=True)
        raise ContinuationError("The codes to extend could not be read: it is not a .npy file of codes.") from exc
    if array.ndim != 2 or array.shape[0] != codebooks or array.shape[1] == 0:
        raise ContinuationError(f"The codes to extend must be {codebooks} rows of codes (got shape {array.shape}).")
    if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= cardinality:
        raise ContinuationError(f"The codes to extend must be integers from 0 to {cardinality - 1}.")
    return torch.from_numpy(array.astype(np.int64))


def plan(clip_samples: int, duration: float, model: MusicGen, window: int | None = None) -> Plan:
    """Pick the context: within the model's window (``window`` frames) with the new part when they fit,
    else the new part slides past the window (:mod:`generation.backends.sliding`) after a full context."""
    frame_rate = float(model.frame_rate)
    hop = round(model.sample_rate / frame_rate)
    new_frames = int(duration * frame_rate)
    window = window if window is not None else int(model.max_duration * frame_rate)
    room = window - new_frames
    one_pass = room >= MIN_CONTEXT_SECONDS * frame_rate  # as audiocraft's generate_continuation within its window
    # sliding: the first window must keep room to sample (10 s of a 30 s window: no cut)
    most = min(int(EXTEND_CONTEXT_SECONDS * frame_rate), room if one_pass else window // 2)
    context_frames = min(clip_samples // hop, most)
    if context_frames < 1:
        raise ContinuationError("The clip to extend is too short to continue.")
    return Plan(context_frames, new_frames, hop)
