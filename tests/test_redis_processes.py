"""``jamgen worker`` as real processes on one private Redis: jobs spread, batches form, kill -9 loses nothing.

The workers are real ``jamgen worker`` processes on the tiny model, one torch thread each. The bot's
part is played by a real JamBot on Redis against the fake Discord, or, to look at the queue alone,
by :class:`RedisJobs` (admit, then read the events stream).
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from generation.jobs import JobRequest, OutputFormat
from generation.redis import RedisJobs
from generation.redis.registry import live_workers
from generation.redis.settings import RedisSettings
from tests.bot_harness import World, job_of, posts_of, running_bot
from tests.redis_helpers import NO_LIMITS, scrape, until
from tests.redis_server import RedisServer, free_port
from tests.worker_processes import WorkerProcesses

REPO = Path(__file__).resolve().parent.parent
WORKERS_TIMEOUT = 240.0  # seconds: workers are processes that load the model first


def short_lease_workers(server: RedisServer, model_dir: Path, log_dir: Path) -> WorkerProcesses:
    """Workers of 4 rows with short leases (a dead one's jobs come back within seconds)."""
    return WorkerProcesses(server, model_dir, log_dir, {
        "JAMGEN_MAX_BATCH": "4", "JAMGEN_BATCH_WINDOW": "0.5", "JAMGEN_HEARTBEAT": "0.5",
        "JAMGEN_RECLAIM_AFTER": "2", "JAMGEN_PROGRESS_INTERVAL": "0.05",
    })


async def both_up(jobs: RedisJobs, workers: WorkerProcesses) -> None:
    """Until both workers are in the registry: else the first to load the model may take every job."""

    async def up() -> bool:
        return len(await live_workers(jobs.client, jobs.keys)) == 2

    await until(up, WORKERS_TIMEOUT, workers.logs)


@pytest.fixture
def workers(redis_server: RedisServer, tiny_model_dir: Path, tmp_path: Path) -> Iterator[WorkerProcesses]:
    pool = short_lease_workers(redis_server, tiny_model_dir, tmp_path)
    yield pool
    pool.stop()


def request(model_dir: Path, index: int, duration: float, owner: str | None = None) -> JobRequest:
    """Job ``index``; its owner is ``user<index>`` unless ``owner`` is given."""
    return JobRequest.create(prompt=f"tune {index}", model=str(model_dir), duration=duration,
                             owner=owner or f"user{index}", format=OutputFormat.WAV, seed=index)


async def admit(jobs: RedisJobs, model_dir: Path, count: int, duration: float) -> list[str]:
    ids: list[str] = []
    for index in range(count):
        ids += await jobs.admit([request(model_dir, index, duration)], limits=NO_LIMITS)
    return ids


async def finished(jobs: RedisJobs, ids: list[str]) -> Counter[str]:
    return Counter(event.job_id for event in await jobs.events() if event.kind == "finished" and event.job_id in ids)


async def test_two_workers_share_the_jobs_and_batch_them(
    redis_jobs: RedisJobs, workers: WorkerProcesses, tiny_model_dir: Path
) -> None:
    workers.start()
    workers.start()
    await both_up(redis_jobs, workers)
    # queued in one atomic step (one admission: one owner). Admitted one by one, idle workers took each as it
    # came, one job per take, so whether any take held two depended on timing.
    requests = [request(tiny_model_dir, index, 2.0, owner="user0") for index in range(12)]
    ids = await redis_jobs.admit(requests, limits=NO_LIMITS)

    async def all_done() -> bool:
        return len(await finished(redis_jobs, ids)) == len(ids)

    await until(all_done, WORKERS_TIMEOUT, workers.logs)
    assert await finished(redis_jobs, ids) == Counter(dict.fromkeys(ids, 1)), "each job finishes exactly once"
    records = [await redis_jobs.job(job_id) for job_id in ids]
    by_worker = Counter(record.worker for record in records if record is not None)
    assert len(by_worker) == 2, f"the jobs did not spread over both workers: {by_worker}"
    takes = Counter((record.worker, record.started) for record in records if record is not None)
    assert max(takes.values()) >= 2, f"no worker took a batch: {takes}"


async def test_killing_every_worker_mid_batch_loses_and_doubles_nothing(
    redis_jobs: RedisJobs, workers: WorkerProcesses, tiny_model_dir: Path
) -> None:
    workers.start()
    ids = await admit(redis_jobs, tiny_model_dir, 4, duration=6.0)

    async def running() -> bool:
        records = [await redis_jobs.job(job_id) for job_id in ids]
        return any(record is not None and record.progress is not None for record in records)

    await until(running, WORKERS_TIMEOUT, workers.logs)
    workers.kill9()
    await asyncio.sleep(1.0)
    assert await finished(redis_jobs, ids) == Counter(), "nothing is delivered while no worker lives"
    workers.start()

    async def all_done() -> bool:
        return len(await finished(redis_jobs, ids)) == len(ids)

    await until(all_done, WORKERS_TIMEOUT, workers.logs)
    assert await finished(redis_jobs, ids) == Counter(dict.fromkeys(ids, 1)), "each job finishes exactly once"
    records = [await redis_jobs.job(job_id) for job_id in ids]
    assert {record.attempt for record in records if record is not None} == {2}, "every job ran again"
    for job_id in ids:
        assert await redis_jobs.result(job_id) is not None


async def test_the_bot_and_two_worker_processes_post_every_track_once(
    world: World, redis_server: RedisServer, redis_jobs: RedisJobs, workers: WorkerProcesses, tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    workers.start()
    workers.start()
    await both_up(redis_jobs, workers)
    redis = RedisSettings(url=redis_server.url, bot_name="bot-a")  # type: ignore[call-arg]
    async with running_bot(world.fake, tiny_model_dir, tmp_path / "bot", redis=redis):
        asks = [await world.generate(user=user, prompt=f"{user.name} {index}", duration=2)
                for index in range(2) for user in (world.alice, world.bob, world.mod)]
        posts = [post for ask in asks for post in await world.result_of(ask, timeout=WORKERS_TIMEOUT)]
    ids = [job_of(post) for post in posts]
    assert len(set(ids)) == len(asks) and all(len(posts_of(world, job_id)) == 1 for job_id in ids)
    records = [await redis_jobs.job(job_id) for job_id in ids]
    assert len({record.worker for record in records if record is not None}) == 2, "both workers made tracks"


async def test_with_every_worker_killed_the_bot_posts_each_track_once_after_a_new_one_starts(
    world: World, redis_server: RedisServer, redis_jobs: RedisJobs, workers: WorkerProcesses, tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    workers.start()
    redis = RedisSettings(url=redis_server.url, bot_name="bot-a")  # type: ignore[call-arg]
    async with running_bot(world.fake, tiny_model_dir, tmp_path / "bot", redis=redis):
        asks = [await world.generate(user=user, prompt=f"{user.name} long", duration=6)
                for user in (world.alice, world.bob, world.mod)]

        async def running() -> bool:
            return any("generating" in (ask.original.content if ask.original else "") for ask in asks)

        await until(running, WORKERS_TIMEOUT, workers.logs)
        workers.kill9()
        await asyncio.sleep(1.0)
        assert [message for message in world.fake.messages if message.attachments] == [], "nothing posted yet"
        workers.start()
        posts = [post for ask in asks for post in await world.result_of(ask, timeout=WORKERS_TIMEOUT)]
    ids = [job_of(post) for post in posts]
    assert len(set(ids)) == len(asks) and all(len(posts_of(world, job_id)) == 1 for job_id in ids)
    records = [await redis_jobs.job(job_id) for job_id in ids]
    assert {record.attempt for record in records if record is not None} == {2}, "every job ran again"


async def test_a_worker_process_registers_serves_metrics_and_withdraws_when_stopped(
    redis_jobs: RedisJobs, workers: WorkerProcesses, tiny_model_dir: Path
) -> None:
    port = free_port()
    workers.env["JAMGEN_METRICS_PORT"] = str(port)
    process = workers.start()
    ids = await admit(redis_jobs, tiny_model_dir, 2, duration=1.0)

    async def all_done() -> bool:
        return len(await finished(redis_jobs, ids)) == len(ids)

    async def counted() -> bool:
        return [entry.jobs_done for entry in await live_workers(redis_jobs.client, redis_jobs.keys)] == [2]

    await until(all_done, WORKERS_TIMEOUT, workers.logs)
    await until(counted, 30, workers.logs)
    (entry,) = await live_workers(redis_jobs.client, redis_jobs.keys)
    assert (entry.pid, entry.model, entry.rows) == (process.pid, str(tiny_model_dir), 4)
    assert entry.throughput is not None and entry.throughput > 0
    samples = await asyncio.to_thread(scrape, port)
    assert samples[("jamgen_jobs_ended_total", (("state", "done"),))] == 2
    assert samples[("jamgen_rows", ())] == 4
    assert samples[("jamgen_audio_seconds_per_second", ())] == pytest.approx(entry.throughput)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 60) == 0, workers.logs()
    assert await live_workers(redis_jobs.client, redis_jobs.keys) == [], "a worker that stops leaves the registry"
