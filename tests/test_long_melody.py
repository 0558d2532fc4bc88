"""A melody track past the model's 30 s window slides as audiocraft's ``generate_with_chroma`` does.

Each window is conditioned on 30 s of the melody from its own time offset, the melody looped
(a 7 s tune, so the second window, 18 s in, starts 4 s into it). On the tiny melody models'
real 30 s window, one torch thread.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from audiocraft.modules.conditioners import WavCondition

from generation.backends.base import GenerationTask
from generation.backends.conditioning import Conditioner, JobConditions, window_melody
from generation.backends.melody import CarriedRandom, read_melody
from generation.backends.musicgen import MusicGenBackend
from generation.encode import EncodeOptions, encode
from generation.jobs import Normalization, OutputFormat
from tests.test_continuation import stock_params
from tests.test_decoder_variants import loaded
from tests.test_long import GREEDY, keep_codes, one_thread, run  # noqa: F401 (one_thread: autouse here too)

RATE = 32000
TUNE_SECONDS = 7


@pytest.fixture(scope="module")
def tune(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven one-second notes, as a WAV file."""
    t = np.arange(RATE) / RATE
    notes = [np.sin(2 * np.pi * f * t) for f in (262.0, 294.0, 330.0, 349.0, 392.0, 440.0, 494.0)]
    wav = (0.4 * np.concatenate(notes)).astype(np.float32)[None]
    path = tmp_path_factory.mktemp("tune") / "tune.wav"
    path.write_bytes(encode(wav, RATE, EncodeOptions(OutputFormat.WAV, normalization=Normalization.NONE)).data)
    return path


@pytest.fixture(scope="module")
def melody_backend(tiny_melody_model_dir: Path, offline_demucs: None) -> MusicGenBackend:
    return loaded(tiny_melody_model_dir)


def stock_with_chroma(backend: MusicGenBackend, task: GenerationTask, melody: torch.Tensor) -> torch.Tensor:
    """audiocraft's ``generate_with_chroma`` for ``task`` (demucs' ``random`` seeded once, as jamgen seeds it)."""
    model = backend._require()
    before = (model.duration, model.extend_stride, dict(model.generation_params), model._progress_callback)
    model.set_generation_params(duration=task.duration, extend_stride=18.0, **stock_params(task.sampling))
    model.set_custom_progress_callback(lambda done, total: None)
    random.seed(task.seed)
    torch.manual_seed(task.seed)
    try:
        _, tokens = model.generate_with_chroma([task.prompt], [melody], RATE, return_tokens=True)
    finally:  # the model is shared by the module's tests: as it was
        model.duration, model.extend_stride, model.generation_params, model._progress_callback = before
    return tokens


def record_prefixes(backend: MusicGenBackend, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The prefix of every window the decoder opens, in order."""
    conditioner = backend._require_decoder().builder.conditioner
    window = conditioner.window
    prefixes: list[torch.Tensor] = []

    def recording(job: JobConditions, offset: int) -> tuple[torch.Tensor, list[object]]:
        prefix, text = window(job, offset)
        prefixes.append(prefix.clone())
        return prefix, text  # type: ignore[return-value]

    monkeypatch.setattr(conditioner, "window", recording)
    return prefixes


def test_a_45_s_melody_track_equals_generate_with_chroma(
    melody_backend: MusicGenBackend, tune: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most of its time is demucs (each side's two windows separate 30 s of melody, and the null row's 30 s)."""
    backend = melody_backend
    codes = keep_codes(backend, monkeypatch)
    prefixes = record_prefixes(backend, monkeypatch)
    task = GenerationTask("m", "calm piano", 45.0, 9, GREEDY, melody_from=str(tune))
    listener = run(backend, [task])
    assert listener.results["m"].shape == (1, 45 * RATE)
    stock = stock_with_chroma(backend, task, read_melody(str(tune), RATE))
    assert stock.shape == (1, 4, 2250)
    assert torch.equal(codes["m"], stock)
    assert len(prefixes) == 2, "two windows, each with its own conditions"
    assert prefixes[0].shape == prefixes[1].shape
    assert not torch.equal(prefixes[0], prefixes[1]), "the second window hears the melody from 18 s on"


def test_a_window_hears_the_melody_from_its_offset_looped() -> None:
    wav = torch.arange(10.0).reshape(1, 1, 10)
    melody = WavCondition(wav, torch.tensor([10]), [8], [None])
    window = window_melody(melody, time_offset=0.5, sample_rate=8, window_seconds=3.0)  # from sample 4, 24 samples
    expected = [4, 5, 6, 7, 8, 9, *range(10), *range(8)]
    assert window.wav.tolist() == [[expected]]
    assert window.length.tolist() == [24]
    assert window.sample_rate == [8] and window.path == [None] and window.seek_time == [0.0]


def test_a_track_within_the_window_hears_the_melody_as_it_is(
    melody_backend: MusicGenBackend, tune: Path
) -> None:
    """Only a sliding track loops the melody (audiocraft's one-pass ``generate`` takes it as given)."""
    conditioner: Conditioner = melody_backend._require_decoder().builder.conditioner
    task = GenerationTask("m", "calm piano", 30.0, 1, GREEDY, melody_from=str(tune))
    attributes, _ = conditioner.attributes(task, None)
    within = JobConditions(attributes, CarriedRandom(1), slides=False)
    sliding = JobConditions(attributes, CarriedRandom(1), slides=True)
    assert not within.per_window and sliding.per_window
    assert within.at(18.0, RATE, 30.0) is attributes
    assert sliding.at(0.0, RATE, 30.0)[0].wav["self_wav"].wav.shape[-1] == 30 * RATE
    assert attributes[0].wav["self_wav"].wav.shape[-1] == TUNE_SECONDS * RATE, "the job's melody stays whole"


def test_a_text_only_track_past_the_window_keeps_its_conditions(melody_backend: MusicGenBackend) -> None:
    conditioner: Conditioner = melody_backend._require_decoder().builder.conditioner
    attributes, _ = conditioner.attributes(GenerationTask("t", "drums", 45.0, 1, GREEDY), None)
    assert not JobConditions(attributes, CarriedRandom(1), slides=True).per_window
