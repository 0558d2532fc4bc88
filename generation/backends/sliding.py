"""Tracks longer than the model's window: audiocraft's extended generation, as windows of one job.

MusicGen attends over at most ``max_duration`` seconds (its *window*, 30 s). audiocraft's
``MusicGen.generate`` goes past it by sliding (``_generate_tokens``): once a window is
full, the next one starts ``extend_stride`` seconds later, with the last
``window − stride`` seconds of codes just generated as its prompt, and the same
conditions (but a melody, which each window hears from its own offset:
:mod:`generation.backends.conditioning`); the new codes of each window are appended to the track.

:func:`generation.windows.plan` is that loop in frames; a :class:`Track` follows one job through it. In the
decode loop a sliding job never leaves the running batch: when its window is full its
row is re-prefilled with the kept codes (chunked, between other jobs' steps, as any
prefill) and it goes on sampling (:mod:`generation.backends.decoder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from generation.windows import Window


def sampled_steps(pattern_provider: Any, window: Window) -> int:
    """Decode steps a window takes: its sequence's columns from the first one after the prompt."""
    pattern = pattern_provider.get_pattern(window.frames)
    return len(pattern.layout) - int(pattern.get_first_step_with_timesteps(window.prompt))


@dataclass
class Track:
    """A job's progress through its windows, and the codes of the track so far."""

    windows: tuple[Window, ...]
    stride: int
    steps: tuple[int, ...]  # decode steps of each window
    index: int = 0
    parts: list[torch.Tensor] = field(default_factory=list)  # [1, K, n] each: the track's codes, in order

    @property
    def window(self) -> Window:
        return self.windows[self.index]

    @property
    def total_frames(self) -> int:
        last = self.windows[-1]
        return last.offset + last.frames

    @property
    def steps_before(self) -> int:
        """Decode steps of the windows already done."""
        return sum(self.steps[: self.index])

    @property
    def total_steps(self) -> int:
        return sum(self.steps)

    def close(self, codes: torch.Tensor) -> torch.Tensor | None:
        """Keep a finished window's codes [1, K, frames]; the next window's prompt, or None when the track is done."""
        self.parts.append(codes if self.index == 0 else codes[..., self.window.prompt :])
        if self.index + 1 == len(self.windows):
            return None
        self.index += 1
        return codes[..., self.stride :]

    def codes(self) -> torch.Tensor:
        """The whole track's codes [1, K, total frames] (once the last window is closed)."""
        return torch.cat(self.parts, dim=-1)
