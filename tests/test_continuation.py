"""Extending a clip (audiocraft's generate_continuation) through the real engine, on the tiny model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch

from generation.backends.base import Backend, GenerationTask
from generation.backends.continuation import EXTEND_CONTEXT_SECONDS, plan, read_clip
from generation.backends.musicgen import MusicGenBackend
from generation.encode import EncodeOptions, encode
from generation.errors import InvalidJob, JobFailed
from generation.events import Progress
from generation.jobs import JobRequest, Normalization, OutputFormat, SamplingParams
from generation.settings import EngineSettings
from generation.worker import Engine
from tests.helpers import Decoded, FaultyBackend, RecordingListener, decode, tiny_backend

RATE = 32000
CLIP_SECONDS = 8.0


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> MusicGenBackend:
    loaded = tiny_backend(tiny_model_dir)
    loaded.load()
    return loaded


def make_engine(backend: Backend, **settings: object) -> tuple[Engine, FaultyBackend]:
    wrapped = FaultyBackend(backend)
    base: dict[str, object] = {"device": "cpu", "batch_window": 0.05, "progress_interval": 0.01}
    engine = Engine(EngineSettings(**(base | settings)), backend_factory=lambda _: wrapped)  # type: ignore[arg-type]
    return engine, wrapped


@pytest.fixture
async def engine(backend: MusicGenBackend) -> AsyncIterator[Engine]:
    async with make_engine(backend)[0] as running:
        yield running


def job(model_dir: Path, prompt: str = "lofi chill beat", **fields: object) -> JobRequest:
    return JobRequest.create(prompt=prompt, model=str(model_dir), **fields)


def wav_job(model_dir: Path, prompt: str = "lofi chill beat", **fields: object) -> JobRequest:
    """Lossless and not normalised: what comes out is the model's waveform, to 16 bits."""
    return job(model_dir, prompt, format=OutputFormat.WAV, normalization=Normalization.NONE, **fields)


async def make_clip(engine: Engine, model_dir: Path, path: Path, seed: int = 1) -> Decoded:
    """An 8 s clip rendered by the engine, kept at ``path`` as the bot keeps its deliveries."""
    audio = await engine.submit(wav_job(model_dir, "the original", duration=CLIP_SECONDS, seed=seed)).result()
    path.write_bytes(audio.data)
    return decode(audio.data)


def tone_clip(path: Path, seconds: float = CLIP_SECONDS) -> Path:
    """A tonal clip (a lossy codec keeps tones close to their waveform, unlike the tiny model's noise)."""
    t = np.arange(int(seconds * RATE)) / RATE
    wav = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t) * np.sin(2 * np.pi * 0.5 * t)
    options = EncodeOptions(OutputFormat.OPUS, normalization=Normalization.NONE)
    path.write_bytes(encode(wav.astype(np.float32)[None], RATE, options).data)
    return path


# -- the request -------------------------------------------------------------------------------
def test_a_missing_clip_is_refused_at_creation(tmp_path: Path) -> None:
    with pytest.raises(InvalidJob, match=r"continue_from: the clip to extend no longer exists"):
        job(tmp_path, continue_from=str(tmp_path / "gone.opus"))
    with pytest.raises(InvalidJob, match="continue_from"):
        job(tmp_path, continue_from=str(tmp_path))  # a directory is no clip either


def test_continuations_share_the_models_batch_key(tmp_path: Path) -> None:
    """A continuation's prompt is prefilled into its own caches, so it batches with any job of its model."""
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"")
    plain = [job(tmp_path, f"p{i}") for i in range(2)]
    extended = [job(tmp_path, continue_from=str(clip), seed=seed) for seed in (1, 2)]
    assert {request.batch_key for request in plain + extended} == {str(tmp_path)}


# -- through the engine ---------------------------------------------------------------------------
async def test_extending_a_wav_clip_keeps_it_and_adds_the_new_seconds(
    engine: Engine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    clip_path = tmp_path / "clip.wav"
    original = await make_clip(engine, tiny_model_dir, clip_path)
    request = wav_job(tiny_model_dir, duration=4.0, seed=7, continue_from=str(clip_path))
    extended = decode((await engine.submit(request).result()).data)
    assert extended.sample_rate == RATE and extended.channels == 1
    assert extended.duration == pytest.approx(CLIP_SECONDS + 4.0, abs=0.03)
    head, tail = extended.samples[:, : original.samples.shape[1]], extended.samples[:, original.samples.shape[1] :]
    assert np.abs(head - original.samples).max() < 1e-3  # the same samples, to 16-bit rounding
    assert tail.std() > 1e-3, "the new part is silent"


async def test_extending_an_opus_clip(engine: Engine, tiny_model_dir: Path, tmp_path: Path) -> None:
    clip_path = tone_clip(tmp_path / "clip.opus")
    original = decode(clip_path.read_bytes()).samples
    request = job(tiny_model_dir, duration=3.0, continue_from=str(clip_path))  # opus, loudness-normalised
    extended = decode((await engine.submit(request).result()).data)
    assert extended.sample_rate == 48000
    assert extended.duration == pytest.approx(CLIP_SECONDS + 3.0, abs=0.03)
    # Opus twice, resampling 48 -> 32 -> 48 kHz and a new gain: the waveform still matches closely.
    head = extended.samples[0, 4800 : original.shape[1] - 4800]
    correlation = np.corrcoef(head, original[0, 4800:-4800])[0, 1]
    assert correlation > 0.99


async def test_a_continuation_is_deterministic_for_a_seed(engine: Engine, tiny_model_dir: Path, tmp_path: Path) -> None:
    clip_path = tmp_path / "clip.wav"
    await make_clip(engine, tiny_model_dir, clip_path)
    requests = [wav_job(tiny_model_dir, duration=2.0, seed=seed, continue_from=str(clip_path)) for seed in (5, 5, 6)]
    first, again, other = [decode((await engine.submit(r).result()).data).samples for r in requests]
    split = int(CLIP_SECONDS * RATE)
    assert np.array_equal(first, again)
    assert np.array_equal(first[:, :split], other[:, :split])
    assert not np.allclose(first[:, split:], other[:, split:], atol=1e-3)


async def test_an_unreadable_clip_fails_alone_and_the_engine_goes_on(
    engine: Engine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "clip.opus"
    corrupt.write_bytes(b"OggS" + bytes(range(256)) * 8)
    with pytest.raises(JobFailed, match=r"could not be read.*not an audio file"):
        await engine.submit(job(tiny_model_dir, continue_from=str(corrupt))).result()
    assert (await engine.submit(job(tiny_model_dir, duration=1.0)).result()).data


async def test_a_clip_deleted_while_queued_fails_clearly(engine: Engine, tiny_model_dir: Path, tmp_path: Path) -> None:
    clip_path = tone_clip(tmp_path / "clip.opus", seconds=2.0)
    request = job(tiny_model_dir, continue_from=str(clip_path))
    clip_path.unlink()
    with pytest.raises(JobFailed, match=r"no longer exists"):
        await engine.submit(request).result()


async def test_too_long_an_extension_is_refused_with_the_limit(
    engine: Engine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """An extension past the model's window slides (tests/test_long.py); the engine's cap still applies."""
    clip_path = tone_clip(tmp_path / "clip.opus", seconds=2.0)
    request = job(tiny_model_dir, duration=31.0, continue_from=str(clip_path), max_duration=300.0)
    with pytest.raises(InvalidJob, match=r"the limit is 30 seconds"):
        engine.submit(request)


async def test_continuations_share_a_batch_with_plain_jobs_and_sound_as_alone(
    backend: MusicGenBackend, tiny_model_dir: Path, tmp_path: Path
) -> None:
    clip_path = tone_clip(tmp_path / "clip.opus", seconds=2.0)
    requests = [
        wav_job(tiny_model_dir, "p0", duration=1.0),
        wav_job(tiny_model_dir, "c0", duration=1.0, seed=1, continue_from=str(clip_path)),
        wav_job(tiny_model_dir, "p1", duration=1.5),
        wav_job(tiny_model_dir, "c1", duration=1.0, seed=2, continue_from=str(clip_path)),
        wav_job(tiny_model_dir, "p2", duration=1.0),
    ]
    engine, wrapped = make_engine(backend, batch_window=0.5)
    async with engine:
        together = await asyncio.gather(*(engine.submit(request).result() for request in requests))
        alone = [await engine.submit(request).result() for request in requests]
    assert wrapped.batches[0] == ["p0", "c0", "p1", "c1", "p2"]
    assert [decode(a.data).duration for a in together] == pytest.approx([1.0, 3.0, 1.5, 3.0, 1.0], abs=0.03)
    assert [a.data for a in together] == [a.data for a in alone]


async def test_cancel_a_running_continuation(engine: Engine, tiny_model_dir: Path, tmp_path: Path) -> None:
    clip_path = tone_clip(tmp_path / "clip.opus", seconds=4.0)
    doomed = engine.submit(job(tiny_model_dir, duration=10.0, continue_from=str(clip_path)))
    seen: list[Progress] = []
    async for event in doomed.events():
        if isinstance(event, Progress):
            seen.append(event)
            if event.done > 20:
                assert engine.cancel(doomed.id)
    assert doomed.state.value == "cancelled"
    assert seen[0].done == 0 and seen[0].total > 500
    after = engine.submit(job(tiny_model_dir, duration=2.0, continue_from=str(clip_path)))
    assert decode((await after.result()).data).duration == pytest.approx(6.0, abs=0.03)


# -- on the backend --------------------------------------------------------------------------------
def continuation(clip: Path, job_id: str = "c", duration: float = 2.0, **sampling: float) -> GenerationTask:
    return GenerationTask(job_id, "lofi", duration, 3, SamplingParams(**sampling), str(clip))  # type: ignore[arg-type]


def test_cancelling_stops_the_decode_loop(backend: MusicGenBackend, tmp_path: Path) -> None:
    clip_path = tone_clip(tmp_path / "clip.opus", seconds=2.0)
    listener = RecordingListener(cancel_after={"c": 10})
    backend.generate([continuation(clip_path, duration=8.0)], listener)
    assert not listener.results and not listener.errors
    assert len(listener.progress_log["c"]) == 10  # the up-front total, then 9 steps: nothing after the cancel


def test_a_continuation_leaves_the_model_as_it_found_it(backend: MusicGenBackend, tmp_path: Path) -> None:
    model = backend._require()
    before = (model.duration, model.extend_stride, dict(model.generation_params), model._progress_callback)
    clip_path = tone_clip(tmp_path / "clip.opus", seconds=2.0)
    listener = RecordingListener()
    backend.generate([continuation(clip_path, temperature=0.0, cfg_coef=1.0)], listener)
    assert listener.results["c"].shape == (1, 4 * RATE)
    assert (model.duration, model.extend_stride, model.generation_params, model._progress_callback) == before


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {}], ids=["greedy", "sampled"])
def test_the_loop_continues_like_stock_generate_continuation(
    tiny_model_dir: Path, tmp_path: Path, sampling: dict[str, float]
) -> None:
    """A chunked prefill (16 positions a pass) and the job's own generator give stock audiocraft's tokens."""
    chunked = tiny_backend(tiny_model_dir, prefill_chunk=16)
    chunked.load()
    clip_path = tone_clip(tmp_path / "clip.opus", seconds=3.0)
    task = continuation(clip_path, duration=2.0, **sampling)
    listener = RecordingListener()
    chunked.generate([task], listener)
    model = chunked._require()
    clip = read_clip(str(clip_path), RATE, 1)
    cut = plan(clip.shape[-1], task.duration, model)
    assert cut.context_frames > 16 * 4  # the prompt really is prefilled in several chunks
    model.set_generation_params(duration=cut.total_frames / model.frame_rate, **stock_params(task.sampling))
    torch.manual_seed(task.seed)
    stock = model.generate_continuation(clip[:, -cut.context_samples :], RATE, [task.prompt])
    ours = listener.results["c"]
    np.testing.assert_array_equal(ours[:, clip.shape[-1] :], stock[0, :, cut.context_samples :].numpy())


def stock_params(sampling: SamplingParams) -> dict[str, object]:
    return {
        "use_sampling": sampling.temperature > 0, "temperature": sampling.temperature, "top_k": sampling.top_k,
        "top_p": sampling.top_p, "cfg_coef": sampling.cfg_coef,
    }


def test_the_context_is_the_end_of_the_clip(backend: MusicGenBackend, tmp_path: Path) -> None:
    """A clip longer than the context window still comes back whole, the new part after it."""
    clip_path = tone_clip(tmp_path / "clip.opus", seconds=EXTEND_CONTEXT_SECONDS + 2.0)
    clip = read_clip(str(clip_path), RATE, 1).numpy()
    listener = RecordingListener()
    backend.generate([continuation(clip_path, duration=1.0)], listener)
    result = listener.results["c"]
    assert result.dtype == np.float32
    assert result.shape == (1, clip.shape[1] + RATE)
    assert np.array_equal(result[:, : clip.shape[1]], clip)
    assert listener.progress_log["c"][-1][0] == listener.progress_log["c"][-1][1]
