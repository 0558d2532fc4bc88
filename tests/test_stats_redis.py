"""``jamgen stats``' Redis part against a real (private) redis-server: the waiting jobs by model and by guild."""

from __future__ import annotations

import pytest

from generation.redis import RedisJobs
from generation.redis.registry import WorkerInfo, publish
from jamgen.stats_redis import DMS, Waiting, guild_of, waiting, waiting_lines, worker_lines
from tests.redis_helpers import NO_LIMITS, request


def worker(name: str, model: str, throughput: float | None = 2.5) -> WorkerInfo:
    return WorkerInfo(
        name=name, model=model, rows=8, rows_in_use=3, batching="continuous", throughput=throughput,
        steps_per_second=40.0, jobs_done=1, jobs_failed=0, started=1.0, host="gpu-1", pid=7,
    )


async def admit(jobs: RedisJobs, akey: str, model: str, owner: str = "someone") -> str:
    (job_id,) = await jobs.admit([request(owner, model)], limits=NO_LIMITS, key=akey)
    return job_id


@pytest.mark.parametrize(
    ("akey", "guild"),
    [("123:456", "123"), ("None:456", DMS), ("u:alice", DMS), ("anon", DMS), ("", DMS), (None, DMS)],
)
def test_the_guild_of_an_admission_key(akey: str | None, guild: str) -> None:
    assert guild_of(akey) == guild


async def test_waiting_jobs_are_counted_by_model_and_guild(redis_jobs: RedisJobs) -> None:
    await publish(redis_jobs.client, redis_jobs.keys, worker("w1", "test-model"), ttl=30)
    for akey, owner in [("111:1", "1"), ("111:2", "2"), ("111:2", "2"), ("222:3", "3"), ("None:4", "4")]:
        await admit(redis_jobs, akey, "test-model", owner)
    await admit(redis_jobs, "333:5", "other-model", "5")  # no worker has served other-model: still listed
    assert [lease.job_id for lease in await redis_jobs.take("w1", "test-model", 1)]  # running: no longer waiting
    queue = await waiting(redis_jobs)
    assert queue == Waiting(total=5, by_model={"test-model": 4, "other-model": 1},
                            by_guild={"111": 2, "222": 1, "333": 1, DMS: 1})
    assert queue.unlisted == 0
    await redis_jobs.client.zrem(redis_jobs.keys.models, "other-model")  # as an older jamgen left it
    queue = await waiting(redis_jobs)
    assert queue.unlisted == 1
    assert waiting_lines(queue) == [
        "waiting jobs: 5",
        "  by model:",
        "    test-model                4",
        "    (models not listed)       1",
        "  by guild:",
        "    111       2",
        "    222       1",
        "    DMs       1",
    ]


async def test_an_empty_queue(redis_jobs: RedisJobs) -> None:
    queue = await waiting(redis_jobs)
    assert queue == Waiting(0, {}, {})
    assert waiting_lines(queue) == ["waiting jobs: 0"]


def test_worker_lines() -> None:
    assert worker_lines([]) == ["workers: none live"]
    lines = worker_lines([worker("gpu-b", "small"), worker("gpu-a", "small", None), worker("gpu-c", "large", 10.0)])
    assert lines == [
        "workers: 3 live",
        "  name   model     rows  throughput",
        "  gpu-c  large      3/8  10.00 audio s/s",
        "  gpu-a  small      3/8  not measured yet",
        "  gpu-b  small      3/8  2.50 audio s/s",
    ]
