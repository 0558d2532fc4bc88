"""Continuing from codes, and keeping them: the foundation of a jam (each section continues its tail's codes).

The equality tests run greedy on the tiny models, against audiocraft's ``_generate_tokens`` given the same
prompt tokens (what ``generate_continuation`` runs once it has encoded its audio prompt).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch

from generation.backends.base import Backend, GenerationTask
from generation.backends.continuation import ContinuationError, read_codes
from generation.backends.musicgen import MusicGenBackend
from generation.encode import EncodedAudio
from generation.errors import InvalidJob
from generation.jobs import JobRequest, Normalization, OutputFormat
from generation.redis import RedisJobs
from generation.redis.inputs import upload_inputs
from generation.redis.results import pack, unpack
from generation.settings import EngineSettings
from generation.worker import Engine
from tests.helpers import RecordingListener, decode
from tests.redis_helpers import NO_LIMITS, serving, until
from tests.test_continuation import stock_params
from tests.test_long import GREEDY, SMALL_STRIDE, load_small, one_thread, small_window_dir  # noqa: F401

K, CARD = 4, 2048  # the tiny models' codebooks and their size


@pytest.fixture(scope="module")
def small(small_window_dir: Path) -> MusicGenBackend:  # noqa: F811
    return load_small(small_window_dir)


def save_codes(path: Path, codes: np.ndarray) -> str:
    np.save(path, codes)
    return str(path)


def random_codes(frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CARD, size=(K, frames), dtype=np.int64)


def run(backend: Backend, *tasks: GenerationTask) -> RecordingListener:
    listener = RecordingListener()
    backend.generate(list(tasks), listener)
    assert not listener.errors, listener.errors
    return listener


def stock_from_tokens(
    backend: MusicGenBackend, task: GenerationTask, prompt: torch.Tensor, stride: float
) -> np.ndarray:
    """audiocraft's ``_generate_tokens`` for ``task`` from ``prompt`` tokens [1, K, n]: all its codes [K, T]."""
    model = backend._require()
    before = (model.duration, model.extend_stride, dict(model.generation_params), model._progress_callback)
    total = prompt.shape[-1] / model.frame_rate + task.duration
    model.set_generation_params(duration=total, extend_stride=stride, **stock_params(task.sampling))
    try:
        attributes, _ = model._prepare_tokens_and_attributes([task.prompt], None)
        torch.manual_seed(task.seed)
        tokens = model._generate_tokens(attributes, prompt, progress=False)
    finally:  # the model may be shared with other tests: as it was
        model.duration, model.extend_stride, model.generation_params, model._progress_callback = before
    return cast(np.ndarray, tokens[0].numpy())


def decoded(backend: MusicGenBackend, codes: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return cast(np.ndarray, backend._require().generate_audio(torch.from_numpy(codes)[None])[0].numpy())


# -- the request and the file ---------------------------------------------------------------------
def test_codes_and_audio_are_one_prompt_or_the_other(tmp_path: Path) -> None:
    codes = save_codes(tmp_path / "c.npy", random_codes(10))
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"x")
    with pytest.raises(InvalidJob, match="give one prompt"):
        JobRequest.create(prompt="a", continue_from=str(clip), continue_codes=codes)
    with pytest.raises(InvalidJob, match="continue_codes: the codes to extend no longer exist"):
        JobRequest.create(prompt="a", continue_codes=str(tmp_path / "gone.npy"))
    request = JobRequest.create(prompt="a", continue_codes=codes, keep_codes=True)
    assert request.continue_codes == codes and request.keep_codes


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (np.zeros((3, 10), np.int64), "must be 4 rows"),
        (np.zeros((4, 0), np.int64), "must be 4 rows"),
        (np.zeros((4, 10), np.float32), "must be integers"),
        (np.full((4, 10), CARD), "must be integers"),
        (np.full((4, 10), -1), "must be integers"),
    ],
)
def test_codes_the_model_cannot_read_are_refused(tmp_path: Path, codes: np.ndarray, message: str) -> None:
    with pytest.raises(ContinuationError, match=message):
        read_codes(save_codes(tmp_path / "c.npy", codes), K, CARD)


def test_a_file_that_is_not_npy_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.npy").write_bytes(b"not numpy")
    with pytest.raises(ContinuationError, match="could not be read"):
        read_codes(str(tmp_path / "c.npy"), K, CARD)


# -- equality with audiocraft --------------------------------------------------------------------------
def test_a_codes_continuation_equals_audiocraft_generate_tokens(tiny_loaded_backend: Backend, tmp_path: Path) -> None:
    backend = cast(MusicGenBackend, tiny_loaded_backend)
    prompt = random_codes(50)
    task = GenerationTask("c", "lofi", 1.0, 3, GREEDY, continue_codes=save_codes(tmp_path / "c.npy", prompt),
                          keep_codes=True)
    listener = run(backend, task)
    stock = stock_from_tokens(backend, task, torch.from_numpy(prompt)[None], stride=18.0)
    kept = listener.codes["c"]
    assert kept.shape == (K, 100) and kept.dtype == np.int64
    np.testing.assert_array_equal(kept, stock)
    np.testing.assert_array_equal(kept[:, :50], prompt)  # the prompt is the codes as given
    np.testing.assert_allclose(listener.results["c"], decoded(backend, kept), atol=1e-5)  # posted: all decoded


def test_a_codes_continuation_past_the_window_slides_like_audiocraft(small: MusicGenBackend, tmp_path: Path) -> None:
    prompt = random_codes(25, seed=1)
    task = GenerationTask("s", "lofi", 2.0, 3, GREEDY, continue_codes=save_codes(tmp_path / "c.npy", prompt),
                          keep_codes=True)
    listener = run(small, task)
    kept = listener.codes["s"]
    assert kept.shape == (K, 125)  # past the 100-frame window: it slid
    np.testing.assert_array_equal(kept, stock_from_tokens(small, task, torch.from_numpy(prompt)[None], SMALL_STRIDE))


def test_codes_past_the_context_are_cut_to_their_tail(small: MusicGenBackend, tmp_path: Path) -> None:
    """A jam continues from its whole track's codes or from its last section's: the same music (no drift)."""
    track = run(small, GenerationTask("t", "lofi", 2.0, 5, GREEDY, keep_codes=True)).codes["t"]
    whole = GenerationTask("w", "more", 1.0, 6, GREEDY, continue_codes=save_codes(tmp_path / "w.npy", track),
                           keep_codes=True)
    tail = GenerationTask("e", "more", 1.0, 6, GREEDY, continue_codes=save_codes(tmp_path / "e.npy", track[:, -50:]),
                          keep_codes=True)
    listener = run(small, whole, tail)
    np.testing.assert_array_equal(listener.codes["w"], listener.codes["e"])
    np.testing.assert_array_equal(listener.codes["w"][:, :50], track[:, -50:])  # the prompt is the kept codes
    again = GenerationTask("a", "on", 1.0, 7, GREEDY, keep_codes=True,
                           continue_codes=save_codes(tmp_path / "a.npy", listener.codes["w"]))
    np.testing.assert_array_equal(run(small, again).codes["a"][:, :50], listener.codes["w"][:, -50:])


def test_codes_are_kept_only_when_asked(small: MusicGenBackend) -> None:
    listener = run(small, GenerationTask("n", "lofi", 1.0, 1, GREEDY))
    assert "n" in listener.results and listener.codes == {}


def test_an_audio_continuation_keeps_its_encoded_context_too(small: MusicGenBackend, tmp_path: Path) -> None:
    from tests.test_continuation import tone_clip

    clip = tone_clip(tmp_path / "clip.opus", seconds=0.5)
    listener = run(small, GenerationTask("x", "lofi", 0.5, 3, GREEDY, continue_from=str(clip), keep_codes=True))
    assert listener.codes["x"].shape == (K, 50)  # 25 frames heard, 25 new


# -- through the engine and Redis ------------------------------------------------------------------------
async def test_kept_codes_come_with_the_result_and_decode_to_it(small: MusicGenBackend, small_window_dir: Path) -> None:  # noqa: F811
    settings = EngineSettings(device="cpu", batch_window=0.05, progress_interval=0.01)
    async with Engine(settings, backend_factory=lambda _: small) as engine:
        request = JobRequest.create(prompt="lofi", model=str(small_window_dir), duration=1.0, seed=2, keep_codes=True,
                                    format=OutputFormat.WAV, normalization=Normalization.NONE, sampling=GREEDY)
        audio = await engine.submit(request).result()
    assert audio.codes is not None and audio.codes.shape == (K, 50)
    posted = decode(audio.data).samples
    np.testing.assert_allclose(posted, decoded(small, audio.codes), atol=2 / 32768)  # 16-bit WAV
    assert b'"dtype": "<u2"' in pack(audio)  # 2 bytes a code
    back = unpack(pack(audio))
    assert back == audio and back.codes is not None
    np.testing.assert_array_equal(back.codes, audio.codes)


def test_a_result_without_codes_packs_as_before() -> None:
    audio = EncodedAudio(b"\0audio\0", OutputFormat.WAV, 32000, 1.0, None)
    blob = pack(audio)
    assert blob == b'{"format": "wav", "sample_rate": 32000, "duration": 1.0, "bitrate_kbps": null}\0\0audio\0'
    assert unpack(blob) == audio and unpack(blob).codes is None
    with_codes = pack(EncodedAudio(b"\0audio\0", OutputFormat.WAV, 32000, 1.0, None, codes=random_codes(3)))
    with pytest.raises(ValueError, match="do not match"):
        unpack(with_codes[:-1])


def test_codes_outside_16_bits_pack_wide() -> None:
    codes = np.array([[70000, -1], [0, 5]], dtype=np.int64)
    back = unpack(pack(EncodedAudio(b"a", OutputFormat.WAV, 32000, 1.0, None, codes=codes))).codes
    assert back is not None and back.dtype == np.int64
    np.testing.assert_array_equal(back, codes)


async def test_codes_to_continue_travel_through_redis(
    redis_jobs: RedisJobs, tiny_loaded_backend: Backend, tiny_model_dir: Path, tmp_path: Path
) -> None:
    prompt = random_codes(50, seed=4)
    path = Path(save_codes(tmp_path / "c.npy", prompt))
    request = JobRequest.create(prompt="jam", model=str(tiny_model_dir), duration=1.0, seed=1, continue_codes=str(path),
                                keep_codes=True, format=OutputFormat.WAV, sampling=GREEDY)
    stored = await upload_inputs(redis_jobs.client, redis_jobs.keys, request, keep_seconds=60)
    assert stored.continue_codes is not None and stored.continue_codes.startswith("redis-input:")
    path.unlink()  # the worker reads the codes from Redis
    [job_id] = await redis_jobs.admit([stored], limits=NO_LIMITS)
    async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir, data_dir=tmp_path / "worker"):
        await until(lambda: _has_result(redis_jobs, job_id))
    blob = await redis_jobs.result(job_id)
    assert blob is not None
    audio = unpack(blob)
    assert audio.codes is not None and audio.codes.shape == (K, 100)
    np.testing.assert_array_equal(audio.codes[:, :50], prompt)
    assert list((tmp_path / "worker" / "inputs").iterdir()) == []


async def _has_result(jobs: RedisJobs, job_id: str) -> bool:
    return await jobs.result(job_id) is not None
