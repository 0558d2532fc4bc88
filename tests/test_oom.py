"""Out of memory anywhere in a batch: raised inside the real backend's decode path, on the tiny model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from generation.backends.musicgen import MusicGenBackend
from generation.errors import JobFailed
from generation.events import Failed, Finished
from generation.jobs import JobRequest, OutputFormat
from generation.settings import EngineSettings
from generation.worker import Engine
from tests.helpers import FaultyBackend, tiny_backend

FRAME_RATE = 50


def oom() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> MusicGenBackend:
    # the plain matmul form: its steps are padded to a multiple of 4 rows at most, so a step has more than 4
    # rows exactly when it holds 3 jobs (the swapped form, which load-time timing may pick, pads to >= 12)
    loaded = tiny_backend(tiny_model_dir, linear="linear")
    loaded.load()
    return loaded


@pytest.fixture
def engine_and_backend(backend: MusicGenBackend) -> Iterator[tuple[Engine, FaultyBackend]]:
    wrapped = FaultyBackend(backend)
    settings = EngineSettings(device="cpu", batch_window=0.3, progress_interval=0.01)  # type: ignore[call-arg]
    yield Engine(settings, backend_factory=lambda _: wrapped), wrapped


@pytest.fixture
async def engine(engine_and_backend: tuple[Engine, FaultyBackend]) -> AsyncIterator[Engine]:
    async with engine_and_backend[0] as running:
        yield running


def wav(model_dir: Path, prompt: str, duration: float) -> JobRequest:
    return JobRequest.create(prompt=prompt, model=str(model_dir), duration=duration, seed=3, format=OutputFormat.WAV)


def patch_decode(
    monkeypatch: pytest.MonkeyPatch, backend: MusicGenBackend, fail: Callable[[int, int], bool]
) -> list[int]:
    """Make EnCodec's decode raise OOM when ``fail(frames, call)``; returns the frames of each call."""
    model = backend._require()
    real = model.generate_audio
    calls: list[int] = []

    def generate_audio(codes: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        frames = int(codes.shape[-1])
        calls.append(frames)
        if fail(frames, len(calls)):
            raise oom()
        return real(codes, *args, **kwargs)

    monkeypatch.setattr(model, "generate_audio", generate_audio)
    return calls


async def test_a_decode_oom_beside_others_is_retried_when_the_batch_is_done(
    engine: Engine, backend: MusicGenBackend, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = int(1.2 * FRAME_RATE)  # the job whose decode runs out of memory twice (the retry too)
    alone = {d: await engine.submit(wav(tiny_model_dir, f"p{d}", d)).result() for d in (1.2, 1.6)}
    tries = 0

    def fail(frames: int, _: int) -> bool:
        nonlocal tries
        if frames == target:
            tries += 1
        return frames == target and tries <= 2

    calls = patch_decode(monkeypatch, backend, fail)
    handles = [engine.submit(wav(tiny_model_dir, f"p{d}", d)) for d in (1.2, 1.6)]
    results = await asyncio.gather(*(handle.result() for handle in handles))
    assert calls == [target, target, int(1.6 * FRAME_RATE), target]  # try, retry, the other job, then alone
    assert [result.data for result in results] == [alone[1.2].data, alone[1.6].data]


async def test_a_decode_oom_that_persists_alone_says_so(
    engine: Engine, backend: MusicGenBackend, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = int(1.2 * FRAME_RATE)
    calls = patch_decode(monkeypatch, backend, lambda frames, _: frames == target)
    handles = [engine.submit(wav(tiny_model_dir, f"p{d}", d)) for d in (1.2, 1.6)]
    doomed, mate = await asyncio.gather(*(handle.outcome() for handle in handles))
    assert isinstance(mate, Finished)
    assert isinstance(doomed, Failed) and "Out of GPU memory even on its own" in doomed.reason
    assert calls.count(target) == 4  # in the batch: try + retry; alone after the batch: try + retry


async def test_a_decode_oom_alone_that_a_retry_fixes_is_not_a_failure(
    engine: Engine, backend: MusicGenBackend, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_decode(monkeypatch, backend, lambda _, call: call == 1)
    assert (await engine.submit(wav(tiny_model_dir, "p", 1.0)).result()).data


async def test_an_oom_inside_a_decode_step_splits_the_running_batch(
    engine_and_backend: tuple[Engine, FaultyBackend], backend: MusicGenBackend, tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Raised from the transformer's first layer during a step of more than two jobs."""
    engine, wrapped = engine_and_backend
    layer = backend._require().lm.transformer.layers[0]
    real = layer.forward
    shared = backend._require_decoder().attention.shared  # who owns which rows of the pass being run

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        context = shared.context
        if context is not None and context.steps == 1 and len(context.segments) > 2:
            raise oom()
        return real(x, *args, **kwargs)

    requests = [wav(tiny_model_dir, f"p{i}", 1.0 + i / 10) for i in range(3)]
    async with engine:
        alone = [await engine.submit(request).result() for request in requests]
        monkeypatch.setattr(layer, "forward", forward)
        results = await asyncio.gather(*(engine.submit(request).result() for request in requests))
        monkeypatch.undo()
        with pytest.raises(JobFailed, match="even on its own"):
            monkeypatch.setattr(layer, "forward", lambda *a, **k: (_ for _ in ()).throw(oom()))
            await engine.submit(requests[0]).result()
    assert [result.data for result in results] == [a.data for a in alone]
    assert wrapped.batches[3:6] == [["p0", "p1", "p2"], ["p0"], ["p1", "p2"]]
    assert wrapped.freed >= 1
