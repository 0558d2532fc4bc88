"""Melody files are read or refused plainly, and a seed makes melody conditioning reproducible."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from audiocraft.models import MusicGen
from audiocraft.modules.conditioners import ConditionType

from generation.backends.melody import CarriedRandom, read_melody, seeded_python_random
from generation.errors import JobFailed, MelodyUnreadable

SAMPLE_RATE = 32000


def _scale(sample_rate: int, seconds: float) -> np.ndarray:
    """Sine notes C E G A B C, mono float32."""
    notes = [261.63, 329.63, 392.0, 440.0, 493.88, 523.25]
    t = np.arange(int(seconds * sample_rate / len(notes))) / sample_rate
    return (np.concatenate([np.sin(2 * math.pi * f * t) for f in notes]) * 0.5).astype(np.float32)


def test_seeding_python_random_restores_its_state() -> None:
    random.seed(123)
    expected = [random.random() for _ in range(3)]
    random.seed(123)

    with seeded_python_random(7):
        inside = random.random()
    with seeded_python_random(7):
        again = random.random()

    assert inside == again
    assert [random.random() for _ in range(3)] == expected


def test_seeding_restores_the_state_when_the_block_raises() -> None:
    random.seed(5)
    expected = random.random()
    random.seed(5)
    with pytest.raises(RuntimeError), seeded_python_random(1):
        random.random()
        raise RuntimeError("job failed")
    assert random.random() == expected


def test_a_carried_state_goes_on_from_its_last_block_and_leaves_the_global_alone() -> None:
    """A long melody track's windows: each window's demucs draws follow the last window's, as stock's seeded once."""
    random.seed(99)
    outside = random.getstate()
    carried = CarriedRandom(7)
    with carried.drawing():
        first = [random.random(), random.random()]
    assert random.getstate() == outside
    random.random()  # whatever else draws in between
    with carried.drawing():
        second = random.random()
    random.seed(7)
    assert [random.random() for _ in range(3)] == [*first, second]


def test_a_stereo_file_is_read_mono_at_the_model_rate(tmp_path: Path) -> None:
    left = _scale(44100, 1.2)
    path = tmp_path / "melody.wav"
    soundfile.write(path, np.stack([left, -left], axis=1) * 0.5 + np.stack([left, left], axis=1) * 0.5, 44100)

    wav = read_melody(str(path), SAMPLE_RATE)

    assert wav.dtype == torch.float32
    assert wav.shape == (1, round(left.size * SAMPLE_RATE / 44100))
    assert wav.abs().max() > 0.1


def test_only_the_first_30_seconds_are_read(tmp_path: Path) -> None:
    path = tmp_path / "long.flac"
    soundfile.write(path, np.full(8000 * 31, 0.25, dtype=np.float32), 8000)

    wav = read_melody(str(path), SAMPLE_RATE)

    assert wav.shape == (1, 30 * SAMPLE_RATE)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MelodyUnreadable, match=r"^The melody file could not be found"):
        read_melody(str(tmp_path / "gone.wav"), SAMPLE_RATE)


@pytest.mark.parametrize("name", ["notes.wav", "notes.mp3", "notes.flac", "notes"])
def test_a_file_that_is_not_audio_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("la la la, this is not audio\n" * 20)

    with pytest.raises(JobFailed, match=r"^The melody file could not be read as audio") as refused:
        read_melody(str(path), SAMPLE_RATE)
    assert isinstance(refused.value, MelodyUnreadable)


@pytest.mark.parametrize("name", ["empty.wav", "empty.ogg"])
def test_an_audio_file_with_no_samples_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    soundfile.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    assert path.stat().st_size > 0, "a header with no samples"

    with pytest.raises(MelodyUnreadable, match=r"^The melody file has no audio in it"):
        read_melody(str(path), SAMPLE_RATE)


@pytest.mark.parametrize("samples", [0, 1])
def test_an_empty_or_one_sample_file_is_refused(tmp_path: Path, samples: int) -> None:
    path = tmp_path / "melody.flac"
    if samples:
        soundfile.write(path, np.full(samples, 0.5, dtype=np.float32), SAMPLE_RATE)
    else:
        path.write_bytes(b"")

    with pytest.raises(MelodyUnreadable, match=r"^The melody file has no audio in it"):
        read_melody(str(path), SAMPLE_RATE)


# -- conditioning ------------------------------------------------------------------------------
def _condition(model: MusicGen, melody: torch.Tensor) -> dict[str, ConditionType]:
    lm = model.lm
    attributes, _ = model._prepare_tokens_and_attributes(["calm piano"], None, melody_wavs=[melody])
    return lm.condition_provider(lm.condition_provider.tokenize(attributes))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def melody_model(tiny_melody_model_dir: Path, offline_demucs: None) -> MusicGen:
    return MusicGen.get_pretrained(str(tiny_melody_model_dir), device="cpu")


@pytest.fixture(scope="module")
def melody(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    path = tmp_path_factory.mktemp("melody") / "scale.wav"
    soundfile.write(path, _scale(SAMPLE_RATE, 3.0), SAMPLE_RATE)
    return read_melody(str(path), SAMPLE_RATE)


def test_the_melody_reaches_the_condition(melody_model: MusicGen, melody: torch.Tensor) -> None:
    """Otherwise the two tests below would compare constants."""
    silence = _condition(melody_model, torch.zeros_like(melody))["self_wav"][0]
    with seeded_python_random(0):
        chroma = _condition(melody_model, melody)["self_wav"][0]
    assert not torch.equal(chroma, silence)
    assert chroma.unique(dim=1).shape[1] > 2, "the notes of the scale show as different chroma frames"


def test_the_same_melody_and_seed_give_the_same_condition(melody_model: MusicGen, melody: torch.Tensor) -> None:
    with seeded_python_random(42):
        first = _condition(melody_model, melody)
    random.random()  # whatever else draws in between
    with seeded_python_random(42):
        second = _condition(melody_model, melody)

    assert first.keys() == second.keys() == {"description", "self_wav"}
    for name in first:
        assert torch.equal(first[name][0], second[name][0]), name
        assert torch.equal(first[name][1], second[name][1]), name


def test_without_the_seed_demucs_random_shift_changes_the_condition(
    melody_model: MusicGen, melody: torch.Tensor
) -> None:
    chromas = []
    for seed in range(4):
        random.seed(seed)  # what other code left in Python's random before the job
        chromas.append(_condition(melody_model, melody)["self_wav"][0])

    assert any(not torch.equal(chroma, chromas[0]) for chroma in chromas[1:])
