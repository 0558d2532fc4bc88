"""One job in the decode loop (a *stream*), and how a job becomes one.

A stream holds everything that makes a job's music its own: its conditioning (text
keys/values for cross-attention, or a prefix for models that prepend their conditions,
like melody; made again for each window of a melody track past the window), its
delay-pattern sequence with its own length, its attention caches at its own position,
and its own random generator. Nothing in it depends on other jobs,
which is why a job can join a running batch at any step and leave at any step.

Inputs that come before the first sampled column are *prefilled*: a melody model's
prefix (chroma and text), and a continuation's prompt tokens (its clip's end encoded, or codes
given as they are). They run as the job's own forward passes, in chunks, never mixed into a
decode step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from generation.backends import continuation
from generation.backends.attention import Installed, JobAttentionState, KeyValue
from generation.backends.base import GenerationTask
from generation.backends.conditioning import Conditioner, JobConditions
from generation.backends.melody import CarriedRandom
from generation.backends.sliding import Track, sampled_steps
from generation.windows import EXTEND_STRIDE, Window, plan, stride_frames

if TYPE_CHECKING:
    from audiocraft.models import MusicGen

log = logging.getLogger(__name__)

UNKNOWN_TOKEN = -1

Deliver = Callable[[torch.Tensor], np.ndarray]


def _as_array(audio: torch.Tensor) -> np.ndarray:
    """A decoded [channels, samples] tensor as float32 numpy."""
    return audio.float().cpu().numpy()


@dataclass
class Stream:
    """One job's state; see the module docstring. Its sequence, caches and prefill are its current window's."""

    task: GenerationTask
    attention: JobAttentionState
    sequence: torch.Tensor  # [1, K, S]: the window's delay-pattern sequence, prompt tokens filled in
    pattern: Any
    first_step: int  # the first column this window samples
    generator: torch.Generator
    deliver: Deliver  # decoded audio [channels, samples] -> what the listener gets
    track: Track  # the job's windows (one unless the track is longer than the model's window)
    conditions: JobConditions  # what its windows' conditions are made of
    prefix: torch.Tensor  # [2, P, D]: the window's prepended conditions (empty but for melody models)
    text: list[KeyValue]  # the window's cross-attention keys/values
    prefill: torch.Tensor | None = None  # [2, P, D] input embeddings still to run before decoding
    step: int = field(init=False)  # the next column to sample

    def __post_init__(self) -> None:
        self.step = self.first_step

    @property
    def job_id(self) -> str:
        return self.task.job_id

    @property
    def frames(self) -> int:
        """Frames of the current window."""
        return self.track.window.frames

    @property
    def last_step(self) -> int:
        return int(self.sequence.shape[-1]) - 1

    @property
    def ready(self) -> bool:
        """Prefilled: it takes part in decode steps."""
        return self.prefill is None

    @property
    def window_done(self) -> bool:
        """Every column of the current window is sampled."""
        return self.step > self.last_step

    @property
    def done(self) -> bool:
        """The last window is done: the whole track is."""
        return self.window_done and self.track.index == len(self.track.windows) - 1

    @property
    def progress(self) -> tuple[int, int]:
        """(steps done, steps in all) over the whole track, as audiocraft's progress callback counts a window's."""
        return self.track.steps_before + self.step - self.first_step, self.track.total_steps

    def next_chunk(self, size: int) -> torch.Tensor:
        """Take the next ``size`` prefill positions ([2, n, D])."""
        assert self.prefill is not None
        chunk, rest = self.prefill[:, :size], self.prefill[:, size:]
        self.prefill = rest if rest.shape[1] else None
        return chunk

    def input_column(self) -> torch.Tensor:
        """The column a decode step feeds for this job: [1, K, 1]."""
        return self.sequence[..., self.step - 1 : self.step]

    def window_codes(self) -> torch.Tensor:
        """The finished window's codes [1, K, frames], its prompt included."""
        codes, _, _ = self.pattern.revert_pattern_sequence(self.sequence.contiguous(), UNKNOWN_TOKEN)
        return codes[..., : self.frames]

    def close_window(self) -> torch.Tensor | None:
        """Keep the finished window's codes; the next window's prompt codes, or None when the track is done."""
        return self.track.close(self.window_codes())

    def codes(self) -> torch.Tensor:
        """The finished job's codes [1, K, frames of the track]."""
        if len(self.track.parts) < len(self.track.windows):  # the last window is not closed yet
            self.close_window()
        return self.track.codes()


class StreamBuilder:
    """Turns a :class:`GenerationTask` into a :class:`Stream` for one loaded model; opens its next windows."""

    def __init__(self, model: MusicGen, attention: Installed, stride: float = EXTEND_STRIDE) -> None:
        self.model = model
        self.lm = model.lm
        self.attention = attention
        self.conditioner = Conditioner(model, attention)
        self.device = next(iter(self.lm.parameters())).device
        self.window = int(model.max_duration * model.frame_rate)  # frames the model attends over
        try:
            self.stride = stride_frames(stride, model.frame_rate, self.window)
        except ValueError:  # a model with a short window: audiocraft's 18 of 30 s, to scale
            self.stride = max(1, self.window * 3 // 5)
            log.warning("extend stride %gs does not fit a %gs window: using %d frames", stride, model.max_duration,
                        self.stride)

    def build(self, task: GenerationTask) -> Stream:
        prompt_wav, cut, deliver = self._continuation(task)
        attributes, prompt_tokens = self.conditioner.attributes(task, prompt_wav)
        if task.continue_codes is not None:
            prompt_tokens, cut = self._codes_prompt(task.continue_codes, task.duration)
        track = self._track(task, cut, prompt_tokens)
        conditions = JobConditions(attributes, CarriedRandom(task.seed), slides=len(track.windows) > 1)
        prefix, text_kv = self.conditioner.window(conditions, track.window.offset)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(task.seed)
        state = JobAttentionState()
        window = self._window(state, track.window, prefix, text_kv, prompt_tokens)
        pattern, sequence, first_step, prefill = window
        return Stream(
            task, state, sequence, pattern, first_step, generator, deliver, track, conditions, prefix, text_kv, prefill
        )

    def next_window(self, stream: Stream, prompt: torch.Tensor) -> None:
        """Open ``stream``'s next window with ``prompt`` (the codes it keeps): fresh caches, its prefill to run."""
        stream.attention.caches.clear()  # the last window's keys and values are no longer needed
        stream.attention = JobAttentionState()
        if stream.conditions.per_window:  # the melody from the window's own offset, as audiocraft's
            stream.prefix, stream.text = self.conditioner.window(stream.conditions, stream.track.window.offset)
        window = self._window(stream.attention, stream.track.window, stream.prefix, stream.text, prompt)
        stream.pattern, stream.sequence, stream.first_step, stream.prefill = window
        stream.step = stream.first_step

    def _track(self, task: GenerationTask, cut: continuation.Plan | None, prompt: torch.Tensor | None) -> Track:
        frames = cut.total_frames if cut is not None else int(task.duration * self.model.frame_rate)
        windows = plan(frames, self.window, self.stride, 0 if prompt is None else int(prompt.shape[-1]))
        steps = tuple(sampled_steps(self.lm.pattern_provider, window) for window in windows)
        return Track(windows, self.stride, steps)

    def _window(
        self, state: JobAttentionState, window: Window, prefix: torch.Tensor, text: list[KeyValue],
        prompt: torch.Tensor | None,
    ) -> tuple[Any, torch.Tensor, int, torch.Tensor | None]:
        """A window's pattern, sequence, first step and prefill; its caches and text go into ``state``."""
        pattern = self.lm.pattern_provider.get_pattern(window.frames)
        sequence, first_step = self._sequence(pattern, window.frames, prompt)
        prefill = self._prefill(prefix, sequence[..., : first_step - 1])
        capacity = prefix.shape[1] + sequence.shape[-1]
        state.caches = [layer.new_cache(capacity, prefix) for layer in self.attention.self_attention]
        state.text = list(text)
        return pattern, sequence, first_step, prefill

    # -- the sequence --------------------------------------------------------------------------
    def _sequence(self, pattern: Any, frames: int, prompt: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        codes = torch.full((1, self.lm.num_codebooks, frames), UNKNOWN_TOKEN, dtype=torch.long, device=self.device)
        prompt_frames = 0
        if prompt is not None:
            prompt_frames = prompt.shape[-1]
            codes[..., :prompt_frames] = prompt
        sequence, _, _ = pattern.build_pattern_sequence(codes, self.lm.special_token_id)
        first_step = pattern.get_first_step_with_timesteps(prompt_frames)
        assert first_step is not None and first_step >= 1
        return sequence, int(first_step)

    def _prefill(self, prefix: torch.Tensor, columns: torch.Tensor) -> torch.Tensor | None:
        """What runs before the first decode step: the prefix, then the prompt's columns but the last.

        The last prompt column is fed by the job's first decode step, whose output samples
        the first new column (stock audiocraft does both in its first forward pass).
        """
        parts = [prefix] if prefix.shape[1] else []
        if columns.shape[-1]:
            embedded = sum(self.lm.emb[k](columns[:, k]) for k in range(self.lm.num_codebooks))
            assert isinstance(embedded, torch.Tensor)
            parts.append(embedded.expand(2, -1, -1).to(prefix.dtype))
        return torch.cat(parts, dim=1) if parts else None

    # -- continuations ---------------------------------------------------------------------------
    def _continuation(
        self, task: GenerationTask
    ) -> tuple[torch.Tensor | None, continuation.Plan | None, Deliver]:
        """For a continuation: the audio prompt, the plan, and how to join the result to the clip."""
        if task.continue_from is None:
            return None, None, lambda audio: _as_array(audio)
        clip = continuation.read_clip(task.continue_from, self.model.sample_rate, self.model.audio_channels)
        cut = continuation.plan(clip.shape[-1], task.duration, self.model, self.window)
        prompt = clip[:, clip.shape[-1] - cut.context_samples :].to(self.device)

        def deliver(audio: torch.Tensor) -> np.ndarray:
            new_part = audio[:, cut.context_samples :].float().cpu()
            return torch.cat([clip, new_part], dim=-1).numpy()

        return prompt, cut, deliver

    def _codes_prompt(self, path: str, duration: float) -> tuple[torch.Tensor, continuation.Plan]:
        """For a continuation from codes: the prompt tokens [1, K, n] (the codes' end, cut as a clip's) and the
        plan. The whole of the codes heard is decoded and delivered, as any job's."""
        codes = continuation.read_codes(path, self.lm.num_codebooks, self.lm.card)
        frames = int(codes.shape[-1])
        hop = round(self.model.sample_rate / self.model.frame_rate)
        cut = continuation.plan(frames * hop, duration, self.model, self.window)
        return codes[None, :, frames - cut.context_frames :].to(self.device), cut
