"""Extend a clip: stock audiocraft ``generate_continuation``, one job at a time.

A continuation job names an audio file and how many seconds to add. The last few
seconds of the clip (:data:`EXTEND_CONTEXT_SECONDS` at most, less when the model's
window would overflow) are the audio prompt; the model regenerates that context and
goes on. The result is the whole original clip followed by the new part only, so the
user's clip is kept sample for sample and the model's re-synthesis of the context is
dropped.

This runs on the engine's generation thread, the only torch user, so seeding torch's
global generator is safe. It borrows the model's generation params and progress
callback and puts them back afterwards: nothing leaks into other jobs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from generation.backends.base import BatchListener, GenerationTask
from generation.errors import JobFailed

if TYPE_CHECKING:
    from audiocraft.models import MusicGen

log = logging.getLogger(__name__)

EXTEND_CONTEXT_SECONDS = 10.0  # how much of the clip's end the model hears
MIN_CONTEXT_SECONDS = 1.0  # below this the model's window is too full to continue anything


class ContinuationError(JobFailed):
    """A clip could not be extended; the message is for the person who asked."""


class _Cancelled(Exception):
    """Raised from the progress callback to stop audiocraft's decode loop."""


@dataclass(frozen=True)
class _Plan:
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


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


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


def plan(clip_samples: int, duration: float, model: MusicGen) -> _Plan:
    """Pick the context so that context + new part fits in the model's window."""
    frame_rate = float(model.frame_rate)
    hop = round(model.sample_rate / frame_rate)
    new_frames = int(duration * frame_rate)
    room = int(model.max_duration * frame_rate) - new_frames
    if room < MIN_CONTEXT_SECONDS * frame_rate:
        most = model.max_duration - MIN_CONTEXT_SECONDS
        raise ContinuationError(
            f"A clip can be extended by at most {most:g} seconds at a time (asked for {duration:g})."
        )
    context_frames = min(clip_samples // hop, int(EXTEND_CONTEXT_SECONDS * frame_rate), room)
    if context_frames < 1:
        raise ContinuationError("The clip to extend is too short to continue.")
    return _Plan(context_frames, new_frames, hop)


def _seconds(frames: int, frame_rate: float) -> float:
    """Seconds that audiocraft turns back into exactly ``frames`` (it truncates ``seconds * frame_rate``)."""
    seconds = frames / frame_rate
    while int(seconds * frame_rate) < frames:
        seconds = math.nextafter(seconds, math.inf)
    return seconds


def _steps(model: MusicGen, plan: _Plan) -> int:
    """How many decode steps audiocraft reports for this plan (its progress total)."""
    pattern = model.lm.pattern_provider.get_pattern(plan.total_frames)
    first_new_step = pattern.get_first_step_with_timesteps(plan.context_frames)
    assert first_new_step is not None
    return len(pattern.layout) - first_new_step


@contextmanager
def _borrowed(model: MusicGen) -> Iterator[None]:
    """Give back the model's generation params and progress callback, whatever happens."""
    saved = (model.duration, model.extend_stride, dict(model.generation_params), model._progress_callback)
    try:
        yield
    finally:
        model.duration, model.extend_stride, model.generation_params, model._progress_callback = saved


def _configure(model: MusicGen, task: GenerationTask, plan: _Plan, listener: BatchListener) -> None:
    params = task.sampling
    model.set_generation_params(
        duration=_seconds(plan.total_frames, float(model.frame_rate)),
        use_sampling=params.temperature > 0,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        cfg_coef=params.cfg_coef,
    )

    def progress(done: int, total: int) -> None:
        if listener.is_cancelled(task.job_id):
            raise _Cancelled
        listener.progress(task.job_id, done, total)

    model.set_custom_progress_callback(progress)


def _extend(model: MusicGen, task: GenerationTask, listener: BatchListener) -> np.ndarray:
    """The original clip followed by ``task.duration`` new seconds, float32 [channels, samples]."""
    assert task.continue_from is not None
    clip = read_clip(task.continue_from, model.sample_rate, model.audio_channels)
    cut = plan(clip.shape[-1], task.duration, model)
    listener.progress(task.job_id, 0, _steps(model, cut))
    prompt = clip[:, clip.shape[-1] - cut.context_samples :]
    with _borrowed(model), torch.no_grad():
        _configure(model, task, cut, listener)
        torch.manual_seed(task.seed)
        # progress=True is what makes audiocraft call the custom callback at all
        generated = model.generate_continuation(prompt, model.sample_rate, [task.prompt], progress=True)
    assert isinstance(generated, torch.Tensor)  # without return_tokens it is the audio alone
    new_part = generated[0, :, cut.context_samples :].float().cpu()
    return torch.cat([clip, new_part], dim=-1).numpy()


def continue_clip(model: MusicGen, task: GenerationTask, listener: BatchListener) -> None:
    """Run one continuation job to its end: finished, failed, or silently cancelled. OOM propagates."""
    if listener.is_cancelled(task.job_id):
        return
    try:
        wav = _extend(model, task, listener)
    except _Cancelled:
        log.info("continuation %s cancelled", task.job_id)
        return
    except Exception as exc:
        if is_out_of_memory(exc):
            raise
        if not isinstance(exc, ContinuationError):
            log.exception("continuation %s failed", task.job_id)
        listener.failed(task.job_id, exc)
        return
    listener.finished(task.job_id, wav)
