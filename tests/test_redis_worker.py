"""The Redis worker on the tiny model against a real (private) redis-server: take, batch, settle."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from generation.backends.base import Backend
from generation.jobs import JobRequest, OutputFormat
from generation.redis import RedisJobs
from generation.redis.registry import WorkerInfo, live_workers, throughput_by_model
from generation.redis.results import unpack
from generation.redis.settings import WorkerTimings
from generation.redis.worker import RedisWorker
from generation.tasks import cancel_and_wait
from tests.bot_harness import Gate
from tests.helpers import decode, oom_over
from tests.redis_helpers import FAST, NO_LIMITS, scrape, serving, until


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
    gate = Gate()  # holds the running job at the backend's door until the second one has been left alone
    async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir, max_batch=1) as (worker, wrapped):
        wrapped.fault = gate
        running = await redis_jobs.admit([request(tiny_model_dir, "running", duration=3.0)], limits=NO_LIMITS)
        await until(lambda: _held(worker, running))
        waiting = await redis_jobs.admit([request(tiny_model_dir, "waiting", "bob")], limits=NO_LIMITS)
        await asyncio.sleep(0.5)  # one row: the second job stays in Redis, not taken
        assert worker.held == running
        gate.open()
    assert await ended(redis_jobs, running) == {running[0]: "finished"}
    record = await redis_jobs.job(waiting[0])
    assert record is not None and record.state == "queued" and record.attempt == 1
    assert await redis_jobs.ordered(str(tiny_model_dir)) == waiting


async def test_a_worker_that_lost_its_job_publishes_nothing_for_it(
    redis_jobs: RedisJobs, tiny_loaded_backend: Backend, tiny_model_dir: Path
) -> None:
    ids = await redis_jobs.admit([request(tiny_model_dir, "stolen", duration=4.0)], limits=NO_LIMITS)
    async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir) as (worker, wrapped):
        await until(lambda: _progressed(redis_jobs, ids[0]))
        reclaimed = await redis_jobs.reclaim("reaper", min_idle=0)  # as if worker-a had stopped heart-beating
        assert reclaimed.requeued == ids
        await until(lambda: _all_ended(redis_jobs, ids))
    events = [event for event in await redis_jobs.events() if event.job_id == ids[0]]
    assert [event.kind for event in events] == ["finished"]
    record = await redis_jobs.job(ids[0])
    assert record is not None and record.attempt == 2, "the file must come from the second run"
    assert wrapped.started.count("stolen") == 2
    assert worker.metrics.value("jamgen_failures_total", reason="lost") == 1
    assert worker.metrics.value("jamgen_jobs_ended_total", state="done") == 1, "the lost run is not counted done"


async def _all_ended(jobs: RedisJobs, job_ids: list[str]) -> bool:
    return set(await ended(jobs, job_ids)) == set(job_ids)


async def _held(worker: RedisWorker, job_ids: list[str]) -> bool:
    return worker.held == job_ids


async def _progressed(jobs: RedisJobs, job_id: str) -> bool:
    record = await jobs.job(job_id)
    return record is not None and record.progress is not None and record.progress[0] > 0


# -- the registry and the metrics --------------------------------------------------------------


async def registered(jobs: RedisJobs) -> list[WorkerInfo]:
    return await live_workers(jobs.client, jobs.keys)


async def test_a_serving_worker_is_registered_with_its_speeds_and_withdraws_when_it_stops(
    redis_jobs: RedisJobs, tiny_loaded_backend: Backend, tiny_model_dir: Path
) -> None:
    long = await redis_jobs.admit([request(tiny_model_dir, "long one", duration=4.0)], limits=NO_LIMITS)
    async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir) as (worker, _):
        await until(lambda: _progressed(redis_jobs, long[0]))

        async def shows_a_row_in_use() -> bool:
            return [entry.rows_in_use for entry in await registered(redis_jobs)] == [1]

        await until(shows_a_row_in_use)
        short = await redis_jobs.admit([request(tiny_model_dir, "short", "bob")], limits=NO_LIMITS)
        await until(lambda: _all_ended(redis_jobs, long + short))

        async def counted_both() -> bool:
            return [(entry.jobs_done, entry.rows_in_use) for entry in await registered(redis_jobs)] == [(2, 0)]

        await until(counted_both)
        (entry,) = await registered(redis_jobs)
        assert (entry.name, entry.model, entry.batching) == ("worker-a", str(tiny_model_dir), "continuous")
        assert (entry.rows, entry.pid, entry.jobs_failed) == (8, os.getpid(), 0)
        assert entry.throughput == pytest.approx(worker.engine.throughput.rate) and entry.throughput > 0
        assert entry.steps_per_second is not None and entry.steps_per_second > 0
        assert throughput_by_model([entry]) == {str(tiny_model_dir): entry.throughput}
        ttl = await redis_jobs.client.pttl(redis_jobs.keys.worker("worker-a"))
        assert 0 < ttl <= FAST.reclaim_after * 1000, "a worker that dies leaves the registry after reclaim_after"
    assert await registered(redis_jobs) == []
    assert await redis_jobs.client.exists(redis_jobs.keys.worker("worker-a")) == 0


async def test_the_metrics_endpoint_moves_as_jobs_run(
    redis_jobs: RedisJobs, tiny_loaded_backend: Backend, tiny_model_dir: Path
) -> None:
    elsewhere = [await redis_jobs.admit([request(Path("other-model"), f"not here {n}")], limits=NO_LIMITS)
                 for n in range(2)]  # jobs no worker here takes: the queue depth holds still at 2
    done = ("jamgen_jobs_ended_total", (("state", "done"),))
    depth = ("jamgen_queue_depth", ())
    async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir, max_batch=1) as (worker, _):
        server = worker.metrics.serve(0)  # 127.0.0.1, a free port
        try:

            async def sees(key: tuple[str, tuple[tuple[str, str], ...]], wanted: float) -> bool:
                return (await asyncio.to_thread(scrape, server.port)).get(key) == wanted

            await until(lambda: sees(depth, 2))
            before = await asyncio.to_thread(scrape, server.port)
            ids = []
            for owner in ("alice", "bob", "carol"):
                ids += await redis_jobs.admit([request(tiny_model_dir, f"{owner} tune", owner, 2.0)], limits=NO_LIMITS)
            await until(lambda: _all_ended(redis_jobs, ids))
            assert await redis_jobs.remove(elsewhere[0][0])
            await until(lambda: sees(depth, 1))
            after = await asyncio.to_thread(scrape, server.port)
        finally:
            server.close()
    assert before[done] == 0 and after[done] == 3
    assert before[("jamgen_rows", ())] == after[("jamgen_rows", ())] == 1
    assert after[("jamgen_rows_in_use", ())] == 0
    assert after[("jamgen_audio_seconds_per_second", ())] == pytest.approx(worker.engine.throughput.rate)
    assert after[("jamgen_audio_seconds_per_second", ())] > before[("jamgen_audio_seconds_per_second", ())] == 0
    assert after[("jamgen_decode_steps_per_second", ())] > before[("jamgen_decode_steps_per_second", ())] == 0
    failures = {labels: value for (name, labels), value in after.items() if name == "jamgen_failures_total"}
    assert failures == {(("reason", reason),): 0 for reason in ("oom", "invalid", "error", "lost", "dead_letter")}
    assert after[("jamgen_request_to_delivery_seconds_count", ())] == 0, "the bot observes deliveries, not a worker"


async def test_failures_are_counted_by_reason(
    redis_jobs: RedisJobs, tiny_loaded_backend: Backend, tiny_model_dir: Path
) -> None:
    async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir, max_duration=2.0) as (worker, wrapped):
        wrapped.fault = oom_over(0)  # every batch runs out of memory
        ids = await redis_jobs.admit([request(tiny_model_dir, "too long", duration=3.0)], limits=NO_LIMITS)
        ids += await redis_jobs.admit([request(tiny_model_dir, "too big", "bob")], limits=NO_LIMITS)
        await until(lambda: _all_ended(redis_jobs, ids))

        async def counted() -> bool:
            return [entry.jobs_failed for entry in await registered(redis_jobs)] == [2]

        await until(counted)
    assert await ended(redis_jobs, ids) == dict.fromkeys(ids, "failed")
    value = worker.metrics.value
    assert (value("jamgen_failures_total", reason="invalid"), value("jamgen_failures_total", reason="oom")) == (1, 1)
    assert value("jamgen_failures_total", reason="error") == 0
    assert (value("jamgen_jobs_ended_total", state="failed"), value("jamgen_jobs_ended_total", state="done")) == (2, 0)


async def test_the_reaper_counts_the_jobs_it_dead_letters(
    redis_jobs: RedisJobs, tiny_loaded_backend: Backend, tiny_model_dir: Path
) -> None:
    last_try = RedisJobs(redis_jobs.client, attempts=1)
    ids = await last_try.admit([request(tiny_model_dir, "doomed")], limits=NO_LIMITS)
    assert [lease.job_id for lease in await last_try.take("ghost", str(tiny_model_dir), 1)] == ids
    reaping = WorkerTimings(heartbeat=0.2, reclaim_after=0.7, reap_every=0.2, poll=0.2, retry=0.05, grace=30.0)
    async with serving(last_try, tiny_loaded_backend, tiny_model_dir, timings=reaping) as (worker, _):
        await until(lambda: _all_ended(last_try, ids))
    assert await ended(last_try, ids) == {ids[0]: "failed"}
    assert worker.metrics.value("jamgen_failures_total", reason="dead_letter") == 1
    assert worker.metrics.value("jamgen_jobs_ended_total", state="failed") == 0, "the ghost's job, not this worker's"


async def test_stopping_outlasts_a_lost_cancellation() -> None:
    """redis-py can lose a cancel that lands mid-command; the worker's loops are cancelled until they end."""
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task], every=0.05), 5)
    assert swallowed.is_set() and task.cancelled()
