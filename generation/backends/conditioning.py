"""A job's conditions, window by window: audiocraft's melody for a track past the model's window.

A job's conditions (text, and a melody model's chroma) become its prefix (prepended, for
melody models) and its cross-attention keys/values. audiocraft's ``MusicGen._generate_tokens``
computes them again for each window of a track longer than ``max_duration``: the melody
(``self_wav``) becomes ``max_duration`` seconds of it from the window's time offset, repeated
periodically where the melody is shorter. So under a track past the window the melody (the
upload's first 30 s) loops, and each window hears its own part of the loop. A track within
the window hears the melody as it is. :class:`Conditioner` does the same for one job; demucs'
random time shift goes on from window to window, as with stock audiocraft seeded once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from audiocraft.modules.conditioners import (
    ClassifierFreeGuidanceDropout,
    ConditioningAttributes,
    ConditionType,
    WavCondition,
)

from generation.backends import melody
from generation.backends.attention import Installed, KeyValue
from generation.backends.base import GenerationTask
from generation.errors import JobFailed

if TYPE_CHECKING:
    from audiocraft.models import MusicGen

MELODY = "self_wav"  # audiocraft's name for a melody model's waveform condition


def window_melody(wav: WavCondition, time_offset: float, sample_rate: int, window_seconds: float) -> WavCondition:
    """The melody a window starting at ``time_offset`` s hears: ``window_seconds`` of ``wav`` from there, looped.

    As audiocraft's ``_generate_tokens`` slices it (positions modulo the melody's length).
    """
    start = int(time_offset * sample_rate)
    target = int(window_seconds * sample_rate)
    positions = torch.arange(start, start + target, device=wav.wav.device)
    looped = wav.wav[..., positions % int(wav.length.item())]
    return WavCondition(looped, torch.full_like(wav.length, target), [sample_rate] * wav.wav.size(0), [None], [0.0])


def _has_melody(attributes: ConditioningAttributes) -> bool:
    return MELODY in attributes.wav and int(attributes.wav[MELODY].length.item()) > 0


@dataclass
class JobConditions:
    """What a job's conditions are made of, kept for each of its windows."""

    attributes: list[ConditioningAttributes]  # as audiocraft prepares them for the job's prompt: the melody whole
    random: melody.CarriedRandom  # Python's ``random`` for demucs' time shifts, window after window
    slides: bool = False  # the track is past the window: each window hears the melody from its own offset

    @property
    def per_window(self) -> bool:
        """Whether the windows' conditions differ: a track past the window that follows a melody."""
        return self.slides and any(_has_melody(attributes) for attributes in self.attributes)

    def at(self, time_offset: float, sample_rate: int, window_seconds: float) -> list[ConditioningAttributes]:
        """The attributes of the window starting at ``time_offset`` seconds."""
        if not self.per_window:
            return self.attributes
        return [
            dataclasses.replace(
                attributes,
                wav={**attributes.wav, MELODY: window_melody(
                    attributes.wav[MELODY], time_offset, sample_rate, window_seconds
                )},
            ) if _has_melody(attributes) else attributes
            for attributes in self.attributes
        ]


class Conditioner:
    """Makes a job's conditions for one loaded model, and each window's prefix and text keys/values."""

    def __init__(self, model: MusicGen, attention: Installed) -> None:
        self.model = model
        self.lm = model.lm
        self.attention = attention

    def attributes(
        self, task: GenerationTask, prompt_wav: torch.Tensor | None
    ) -> tuple[list[ConditioningAttributes], torch.Tensor | None]:
        """The job's attributes (its melody read whole) and prompt tokens, as audiocraft prepares one prompt's."""
        melody_wavs: list[torch.Tensor | None] | None = None
        if task.melody_from is not None:
            if MELODY not in self.lm.condition_provider.conditioners:
                raise JobFailed("This model does not follow a melody: pick a melody model (musicgen-melody).")
            melody_wavs = [melody.read_melody(task.melody_from, self.model.sample_rate)]
        prompt = None if prompt_wav is None else prompt_wav[None]
        attributes, prompt_tokens = self.model._prepare_tokens_and_attributes(
            [task.prompt], prompt, melody_wavs=melody_wavs
        )
        return list(attributes), prompt_tokens

    def window(self, job: JobConditions, offset: int) -> tuple[torch.Tensor, list[KeyValue]]:
        """The prefix [2, P, D] and cross-attention keys/values of the window at track frame ``offset``.

        Rows (cond, null), exactly as audiocraft's ``LMModel.generate`` builds them for the window.
        """
        time_offset = offset / self.model.frame_rate  # as audiocraft's ``current_gen_offset / frame_rate``
        attributes = job.at(time_offset, self.model.sample_rate, self.model.max_duration)
        null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
        provider = self.lm.condition_provider
        with job.random.drawing():  # demucs draws a time shift from ``random``
            conditions = dict(provider(provider.tokenize(attributes + null)))
        prefix, text = self.lm.fuser(self._empty_input(conditions), conditions)
        text_kv = [layer.project_text(text) for layer in self.attention.cross_attention] if text is not None else []
        return prefix, text_kv

    def _empty_input(self, conditions: dict[str, ConditionType]) -> torch.Tensor:
        """A zero-length input for the fuser: what it returns is then the prefix alone."""
        device = next(iter(self.lm.parameters())).device
        dtype = next(iter(conditions.values()))[0].dtype if conditions else torch.float32
        return torch.zeros(2, 0, self.lm.dim, device=device, dtype=dtype)
