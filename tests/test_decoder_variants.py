"""Every MusicGen variant through jamgen's decode loop, on tiny checkpoints built by audiocraft's builders.

Stereo has 8 streams (delays [0,0,1,1,2,2,3,3]) and gives 2 channels; melody models
prepend their conditions (chroma, then text) instead of cross-attending, so each job has
its own prefix, prefilled into its own caches.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from generation.backends.base import GenerationTask
from generation.backends.musicgen import MusicGenBackend
from generation.encode import EncodeOptions, encode
from generation.jobs import Normalization, OutputFormat, SamplingParams
from tests.helpers import RecordingListener, tiny_backend
from tests.test_continuous import ScriptedJoin

RATE = 32000


def task(
    job_id: str, prompt: str, duration: float, seed: int, melody: Path | None = None, **sampling: float
) -> GenerationTask:
    params = SamplingParams(**sampling)  # type: ignore[arg-type]
    return GenerationTask(job_id, prompt, duration, seed, params, melody_from=None if melody is None else str(melody))


def run(backend: MusicGenBackend, tasks: list[GenerationTask], join: ScriptedJoin | None = None) -> RecordingListener:
    listener = RecordingListener()
    backend.generate(tasks, listener, join)
    assert not listener.errors, listener.errors
    return listener


def loaded(model_dir: Path) -> MusicGenBackend:
    backend = tiny_backend(model_dir, prefill_chunk=64)
    backend.load()
    return backend


@pytest.fixture(scope="module")
def melody_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A little tune: four notes, as a WAV file."""
    t = np.arange(RATE // 2) / RATE
    notes = [np.sin(2 * np.pi * f * t) for f in (262.0, 330.0, 392.0, 523.0)]
    wav = (0.4 * np.concatenate(notes)).astype(np.float32)[None]
    path = tmp_path_factory.mktemp("melody") / "tune.wav"
    path.write_bytes(encode(wav, RATE, EncodeOptions(OutputFormat.WAV, normalization=Normalization.NONE)).data)
    return path


# -- stereo ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stereo(tiny_stereo_model_dir: Path) -> MusicGenBackend:
    return loaded(tiny_stereo_model_dir)


def test_stereo_gives_two_channels_and_stock_audiocraft_music(stereo: MusicGenBackend) -> None:
    job = task("s", "calm piano", 1.0, 5)
    ours = run(stereo, [job]).results["s"]
    assert ours.shape == (2, RATE)
    model = stereo._require()
    model.set_generation_params(duration=1.0)
    torch.manual_seed(job.seed)
    np.testing.assert_array_equal(ours, model.generate([job.prompt])[0].numpy())


def test_stereo_batched_and_joined_equals_alone(stereo: MusicGenBackend) -> None:
    jobs = [task("a", "calm piano", 1.0, 1), task("b", "drums", 0.6, 2, temperature=0.0), task("c", "bass", 0.8, 3)]
    alone = {job.job_id: run(stereo, [job]).results[job.job_id] for job in jobs}
    together = run(stereo, jobs[:2], ScriptedJoin({5: [jobs[2]]})).results
    for job in jobs:
        np.testing.assert_array_equal(together[job.job_id], alone[job.job_id], err_msg=job.job_id)


# -- melody ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def melody_backend(tiny_melody_model_dir: Path, offline_demucs: None) -> MusicGenBackend:
    return loaded(tiny_melody_model_dir)


def test_melody_jobs_have_their_own_prefix_and_batch_as_alone(
    melody_backend: MusicGenBackend, melody_file: Path
) -> None:
    """Text-only and melody jobs of different prompt lengths, one joining mid-run: each equals itself alone."""
    jobs = [
        task("text", "calm piano", 1.0, 1),
        task("tune", "a long prompt about strings and a choir", 1.0, 2, melody=melody_file),
        task("late", "drums", 0.6, 3, melody=melody_file, temperature=0.0),
    ]
    alone = {job.job_id: run(melody_backend, [job]).results[job.job_id] for job in jobs}
    together = run(melody_backend, jobs[:2], ScriptedJoin({7: [jobs[2]]})).results
    for job in jobs:
        np.testing.assert_array_equal(together[job.job_id], alone[job.job_id], err_msg=job.job_id)
    text_only = run(melody_backend, [task("tune", jobs[1].prompt, 1.0, 2)]).results["tune"]
    assert not np.array_equal(alone["tune"], text_only)  # the melody is heard


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {}], ids=["greedy", "sampled"])
def test_melody_follows_stock_generate_with_chroma(
    melody_backend: MusicGenBackend, melody_file: Path, sampling: dict[str, float]
) -> None:
    """The prefix prefilled in chunks of 64 gives stock audiocraft's tokens (same seed, demucs seeded too)."""
    from generation.backends.melody import read_melody

    job = task("m", "calm piano", 1.0, 9, melody=melody_file, **sampling)
    ours = run(melody_backend, [job]).results["m"]
    model = melody_backend._require()
    params = job.sampling
    model.set_generation_params(
        duration=1.0, use_sampling=params.temperature > 0, temperature=params.temperature, top_k=params.top_k,
        top_p=params.top_p, cfg_coef=params.cfg_coef,
    )
    random.seed(job.seed)
    torch.manual_seed(job.seed)
    stock = model.generate_with_chroma([job.prompt], [read_melody(str(melody_file), RATE)], RATE)
    np.testing.assert_array_equal(ours, stock[0].numpy())


def test_a_melody_for_a_model_without_one_fails_clearly(stereo: MusicGenBackend, melody_file: Path) -> None:
    listener = RecordingListener()
    stereo.generate([task("m", "calm piano", 1.0, 1, melody=melody_file)], listener)
    assert "does not follow a melody" in str(listener.errors["m"])


@pytest.fixture(scope="module")
def stereo_melody(tiny_stereo_melody_model_dir: Path, offline_demucs: None) -> MusicGenBackend:
    return loaded(tiny_stereo_melody_model_dir)


def test_stereo_melody_gives_two_channels_batched_as_alone(stereo_melody: MusicGenBackend, melody_file: Path) -> None:
    jobs = [task("a", "calm piano", 1.0, 1, melody=melody_file), task("b", "drums", 0.8, 2)]
    alone = {job.job_id: run(stereo_melody, [job]).results[job.job_id] for job in jobs}
    together = run(stereo_melody, jobs).results
    assert alone["a"].shape == (2, RATE)
    for job in jobs:
        np.testing.assert_array_equal(together[job.job_id], alone[job.job_id], err_msg=job.job_id)
