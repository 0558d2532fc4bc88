"""The engine end to end on the tiny model: queue, batching, events, errors, encoding."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from generation.backends.base import Backend, GenerationTask
from generation.errors import EngineClosed, InvalidJob, JobCancelled, JobFailed
from generation.events import Cancelled, Encoding, Failed, Finished, JobHandle, Progress, Queued, Started
from generation.jobs import JobRequest, OutputFormat
from generation.settings import EngineSettings
from generation.worker import Engine
from tests.helpers import FaultyBackend, decode, oom_over, tiny_backend

Fault = Callable[[Sequence[GenerationTask]], None]


@pytest.fixture(scope="module")
def shared_backends(tiny_model_dir: Path) -> dict[str, Backend]:
    """One loaded tiny model per test module (loading is the slow part)."""
    backend = tiny_backend(tiny_model_dir)
    backend.load()
    return {backend.model_id: backend}


def make_engine(
    backends: dict[str, Backend], fault: Fault | None = None, **settings: object
) -> tuple[Engine, dict[str, FaultyBackend]]:
    wrapped: dict[str, FaultyBackend] = {}

    def factory(model_id: str) -> Backend:
        inner = backends.get(model_id) or tiny_backend(model_id)
        wrapped[model_id] = FaultyBackend(inner, fault)
        return wrapped[model_id]

    base: dict[str, object] = {"device": "cpu", "batch_window": 0.05, "progress_interval": 0.01}
    engine = Engine(EngineSettings(**(base | settings)), backend_factory=factory)  # type: ignore[arg-type]
    return engine, wrapped


@pytest.fixture
async def engine(shared_backends: dict[str, Backend]) -> AsyncIterator[Engine]:
    async with make_engine(shared_backends)[0] as running:
        yield running


def job(model_dir: Path, prompt: str = "lofi chill beat", **fields: object) -> JobRequest:
    return JobRequest.create(prompt=prompt, model=str(model_dir), duration=fields.pop("duration", 1.0), **fields)


async def collect(handle: JobHandle) -> list[object]:
    return [event async for event in handle.events()]


@pytest.mark.parametrize(
    ("fmt", "rate"),
    [(OutputFormat.OPUS, 48000), (OutputFormat.MP3, 32000), (OutputFormat.WAV, 32000), (OutputFormat.FLAC, 32000)],
)
async def test_every_format_decodes_to_the_requested_duration(
    engine: Engine, tiny_model_dir: Path, fmt: OutputFormat, rate: int
) -> None:
    audio = await engine.submit(job(tiny_model_dir, duration=1.5, format=fmt)).result()
    decoded = decode(audio.data)
    assert audio.format is fmt
    assert decoded.sample_rate == rate
    assert decoded.channels == 1
    assert decoded.duration == pytest.approx(1.5, abs=0.03)


async def test_events_tell_the_whole_story(engine: Engine, tiny_model_dir: Path) -> None:
    events = await collect(engine.submit(job(tiny_model_dir)))
    kinds = [type(event) for event in events]
    assert kinds[0] is Queued and kinds[1] is Started
    assert kinds[-2:] == [Encoding, Finished]
    progress = [event for event in events if isinstance(event, Progress)]
    assert progress, "no progress reported"
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert progress[-1].done == progress[-1].total == 53


@pytest.mark.parametrize(
    ("batching", "batches", "joined"),
    [("static", [3, 2], [0, 0]), ("continuous", [3], [2])],
)
async def test_jobs_waiting_together_share_one_batch(
    shared_backends: dict[str, Backend], tiny_model_dir: Path, batching: str, batches: list[int], joined: list[int]
) -> None:
    """Static: a second batch once the first is done. Continuous: the other two join as rows free up."""
    engine, backends = make_engine(shared_backends, max_batch=3, batching=batching)
    async with engine:
        prompts = [f"prompt number {i}" for i in range(5)]
        handles = [engine.submit(job(tiny_model_dir, prompt, duration=1.0 + i / 4)) for i, prompt in enumerate(prompts)]
        audio = await asyncio.gather(*(h.result() for h in handles))
    backend = backends[str(tiny_model_dir)]
    assert [len(batch) for batch in backend.batches] == batches
    assert [len(prompts) for prompts in backend.joined] == joined
    assert [decode(a.data).duration for a in audio] == pytest.approx([1.0, 1.25, 1.5, 1.75, 2.0], abs=0.03)


async def test_different_models_never_share_a_batch(
    shared_backends: dict[str, Backend], tiny_model_dir: Path, tiny_words_model_dir: Path
) -> None:
    words_id = str(tiny_words_model_dir.resolve())
    engine, backends = make_engine(shared_backends)
    async with engine:
        handles = [engine.submit(job(d, f"p{i}")) for i, d in enumerate([tiny_model_dir, tiny_words_model_dir] * 2)]
        await asyncio.gather(*(h.result() for h in handles))
    assert backends[str(tiny_model_dir)].batches == [["p0", "p2"]]
    assert backends[words_id].batches == [["p1", "p3"]]


async def test_batched_result_equals_the_job_alone(engine: Engine, tiny_model_dir: Path) -> None:
    request = job(tiny_model_dir, "steel drums at sunrise", seed=99, format=OutputFormat.WAV)
    alone = await engine.submit(request).result()
    others = [engine.submit(job(tiny_model_dir, f"other {i}", format=OutputFormat.WAV)) for i in range(2)]
    batched = engine.submit(request)
    assert (await batched.result()).data == alone.data
    await asyncio.gather(*(h.result() for h in others))


async def test_cancel_a_queued_job(shared_backends: dict[str, Backend], tiny_model_dir: Path) -> None:
    engine, backends = make_engine(shared_backends, max_batch=1)
    async with engine:
        first = engine.submit(job(tiny_model_dir, "first", duration=2.0))
        second = engine.submit(job(tiny_model_dir, "second"))
        assert engine.cancel(second.id)
        assert not engine.cancel(second.id)
        with pytest.raises(JobCancelled):
            await second.result()
        await first.result()
    assert backends[str(tiny_model_dir)].batches == [["first"]]


async def test_cancel_a_running_job_keeps_its_batch_mates(engine: Engine, tiny_model_dir: Path) -> None:
    doomed = engine.submit(job(tiny_model_dir, "doomed", duration=10.0))
    mate = engine.submit(job(tiny_model_dir, "mate", duration=3.0))
    async for event in doomed.events():
        if isinstance(event, Progress) and event.done > 20:
            assert engine.cancel(doomed.id)
    assert doomed.state.value == "cancelled"
    assert decode((await mate.result()).data).duration == pytest.approx(3.0, abs=0.03)


async def test_out_of_memory_splits_the_batch(shared_backends: dict[str, Backend], tiny_model_dir: Path) -> None:
    engine, backends = make_engine(shared_backends, fault=oom_over(2))
    async with engine:
        handles = [engine.submit(job(tiny_model_dir, f"p{i}")) for i in range(5)]
        await asyncio.gather(*(h.result() for h in handles))
    backend = backends[str(tiny_model_dir)]
    assert backend.batches == [["p0", "p1", "p2", "p3", "p4"], ["p0", "p1"], ["p2", "p3", "p4"], ["p2"], ["p3", "p4"]]
    assert backend.freed == 2


async def test_out_of_memory_alone_fails_clearly_and_the_worker_survives(
    shared_backends: dict[str, Backend], tiny_model_dir: Path
) -> None:
    calls = 0

    def oom_first_two(tasks: Sequence[GenerationTask]) -> None:
        nonlocal calls
        calls += 1
        if calls <= 1:
            oom_over(0)(tasks)

    engine, _ = make_engine(shared_backends, fault=oom_first_two)
    async with engine:
        with pytest.raises(JobFailed, match=r"Out of GPU memory.*shorter duration"):
            await engine.submit(job(tiny_model_dir)).result()
        assert (await engine.submit(job(tiny_model_dir)).result()).data


async def test_a_model_error_fails_only_the_job_concerned(
    shared_backends: dict[str, Backend], tiny_model_dir: Path
) -> None:
    def poison(tasks: Sequence[GenerationTask]) -> None:
        if any("poison" in task.prompt for task in tasks):
            raise RuntimeError("index out of range in self")

    engine, _ = make_engine(shared_backends, fault=poison)
    async with engine:
        handles = [engine.submit(job(tiny_model_dir, p)) for p in ("good one", "poison", "good two", "good three")]
        outcomes = await asyncio.gather(*(h.outcome() for h in handles))
    assert [type(o) for o in outcomes] == [Finished, Failed, Finished, Finished]
    reason = outcomes[1].reason  # type: ignore[union-attr]
    assert "RuntimeError" in reason and "error id" in reason and "Traceback" not in reason


async def test_a_model_that_cannot_load_says_why(tmp_path: Path, shared_backends: dict[str, Backend]) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    engine, _ = make_engine(shared_backends)
    async with engine:
        with pytest.raises(JobFailed, match=r"state_dict\.bin"):
            await engine.submit(job(empty)).result()


async def test_byte_cap_is_respected(engine: Engine, tiny_model_dir: Path) -> None:
    audio = await engine.submit(job(tiny_model_dir, duration=4.0, max_file_bytes=12_000)).result()
    assert len(audio.data) <= 12_000
    assert decode(audio.data).duration == pytest.approx(4.0, abs=0.03)


async def test_duration_over_the_engine_limit_is_refused(shared_backends: dict[str, Backend], tmp_path: Path) -> None:
    engine, _ = make_engine(shared_backends, max_duration=5)
    async with engine:
        with pytest.raises(InvalidJob, match="5 seconds"):
            engine.submit(JobRequest.create(prompt="x", duration=10, model=str(tmp_path)))


async def test_close_cancels_waiting_jobs_and_refuses_new_ones(
    shared_backends: dict[str, Backend], tiny_model_dir: Path
) -> None:
    engine, _ = make_engine(shared_backends, max_batch=1)
    await engine.start()
    running = engine.submit(job(tiny_model_dir, duration=5.0))
    waiting = engine.submit(job(tiny_model_dir))
    await asyncio.sleep(0.2)
    await engine.close()
    assert isinstance(await waiting.outcome(), Cancelled)
    assert isinstance(await running.outcome(), Cancelled)
    with pytest.raises(EngineClosed):
        engine.submit(job(tiny_model_dir))


async def test_event_loop_stays_responsive_during_generation(engine: Engine, tiny_model_dir: Path) -> None:
    handle = engine.submit(job(tiny_model_dir, duration=6.0))
    worst = 0.0
    loop = asyncio.get_running_loop()
    while not handle.done:
        before = loop.time()
        await asyncio.sleep(0.01)
        worst = max(worst, loop.time() - before - 0.01)
    await handle.result()
    assert worst < 0.5, f"event loop stalled {worst:.3f}s"


async def test_jobs_join_a_running_batch_and_are_told(
    shared_backends: dict[str, Backend], tiny_model_dir: Path
) -> None:
    """With 2 rows, a 6 s job running: the first late job joins at once, the second waits for a free row."""
    engine, backends = make_engine(shared_backends, max_batch=2, batch_window=0.0)
    finished: list[str] = []

    async def follow(handle: JobHandle) -> list[object]:
        events = await collect(handle)
        finished.append(handle.request.prompt)
        return events

    async with engine:
        long = engine.submit(job(tiny_model_dir, "long", duration=6.0))
        async for event in long.events():
            if isinstance(event, Progress) and event.done > 0:
                break
        late = [engine.submit(job(tiny_model_dir, f"late{i}", duration=1.0)) for i in range(2)]
        late_events = await asyncio.gather(*(follow(handle) for handle in late))
        await follow(long)
    assert backends[str(tiny_model_dir)].batches == [["long"]]
    assert backends[str(tiny_model_dir)].joined == [["late0", "late1"]]
    assert finished == ["late0", "late1", "long"]
    first, second = ([type(event) for event in events] for events in late_events)
    assert first[:2] == [Queued, Started] and first[-1] is Finished
    assert second[:2] == [Queued, Queued] and second[2] is Started  # position 2, then 1 once late0 joined
    assert [event.position for event in late_events[1][:2]] == [2, 1]  # type: ignore[attr-defined]
