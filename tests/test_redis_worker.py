"""The Redis worker on the tiny model against a real (private) redis-server: take, batch, settle."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from generation.backends.base import Backend
from generation.jobs import JobRequest, OutputFormat
from generation.redis import RedisJobs
from generation.redis.results import unpack
from tests.helpers import decode
from tests.redis_helpers import NO_LIMITS, serving, until


def request(model_dir: Path, prompt: str, owner: str = "alice", duration: float = 1.0) -> JobRequest:
    return JobRequest.create(prompt=prompt, model=str(model_dir), duration=duration, owner=owner,
                             format=OutputFormat.WAV, seed=7)


async def ended(jobs: RedisJobs, job_ids: list[str]) -> dict[str, str]:
    """job id -> kind of its events (finished, failed...), for the jobs that have one."""
    return {event.job_id: event.kind for event in await jobs.events() if event.job_id in job_ids}


async def test_jobs_are_taken_batched_and_their_files_stored(
    redis_jobs: RedisJobs, tiny_loaded_backend: Backend, tiny_model_dir: Path
) -> None:
    ids = []
    for owner in ("alice", "bob", "carol"):
        ids += await redis_jobs.admit([request(tiny_model_dir, f"{owner} tune", owner)], limits=NO_LIMITS)
    async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir) as (worker, wrapped):
        await until(lambda: _all_ended(redis_jobs, ids))
    assert await ended(redis_jobs, ids) == dict.fromkeys(ids, "finished")
    assert max(len(batch) for batch in wrapped.batches) >= 2, f"no batch formed: {wrapped.batches}"
    for job_id in ids:
        blob = await redis_jobs.result(job_id)
        assert blob is not None
        audio = unpack(blob)
        assert audio.format is OutputFormat.WAV and audio.duration == pytest.approx(1.0, abs=0.05)
        assert decode(audio.data).duration == pytest.approx(1.0, abs=0.05)
    assert worker.held == []


async def test_a_job_queued_while_a_batch_runs_joins_it(
    redis_jobs: RedisJobs, tiny_loaded_backend: Backend, tiny_model_dir: Path
) -> None:
    first = await redis_jobs.admit([request(tiny_model_dir, "long one", duration=4.0)], limits=NO_LIMITS)
    async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir) as (_, wrapped):
        await until(lambda: _progressed(redis_jobs, first[0]))
        late = await redis_jobs.admit([request(tiny_model_dir, "late one", "bob")], limits=NO_LIMITS)
        await until(lambda: _all_ended(redis_jobs, first + late))
    assert wrapped.joined[0] == ["late one"], (wrapped.batches, wrapped.joined)


async def test_stopping_gives_back_the_jobs_that_had_not_started(
    redis_jobs: RedisJobs, tiny_loaded_backend: Backend, tiny_model_dir: Path
) -> None:
    running = await redis_jobs.admit([request(tiny_model_dir, "running", duration=3.0)], limits=NO_LIMITS)
    async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir, max_batch=1) as (worker, _):
        await until(lambda: _progressed(redis_jobs, running[0]))
        waiting = await redis_jobs.admit([request(tiny_model_dir, "waiting", "bob")], limits=NO_LIMITS)
        await asyncio.sleep(0.5)  # one row: the second job stays in Redis, not taken
        assert worker.held == running
    assert await ended(redis_jobs, running) == {running[0]: "finished"}
    record = await redis_jobs.job(waiting[0])
    assert record is not None and record.state == "queued" and record.attempt == 1
    assert await redis_jobs.ordered(str(tiny_model_dir)) == waiting


async def test_a_worker_that_lost_its_job_publishes_nothing_for_it(
    redis_jobs: RedisJobs, tiny_loaded_backend: Backend, tiny_model_dir: Path
) -> None:
    ids = await redis_jobs.admit([request(tiny_model_dir, "stolen", duration=4.0)], limits=NO_LIMITS)
    async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir) as (_, wrapped):
        await until(lambda: _progressed(redis_jobs, ids[0]))
        reclaimed = await redis_jobs.reclaim("reaper", min_idle=0)  # as if worker-a had stopped heart-beating
        assert reclaimed.requeued == ids
        await until(lambda: _all_ended(redis_jobs, ids))
    events = [event for event in await redis_jobs.events() if event.job_id == ids[0]]
    assert [event.kind for event in events] == ["finished"]
    record = await redis_jobs.job(ids[0])
    assert record is not None and record.attempt == 2, "the file must come from the second run"
    assert wrapped.started.count("stolen") == 2


async def _all_ended(jobs: RedisJobs, job_ids: list[str]) -> bool:
    return set(await ended(jobs, job_ids)) == set(job_ids)


async def _progressed(jobs: RedisJobs, job_id: str) -> bool:
    record = await jobs.job(job_id)
    return record is not None and record.progress is not None and record.progress[0] > 0
