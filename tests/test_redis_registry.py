"""The worker registry on a real (private) redis-server: publish, expire, withdraw, read."""

from __future__ import annotations

import asyncio
import dataclasses

from redis.asyncio import Redis

from generation.redis import Keys
from generation.redis.registry import (
    WorkerInfo,
    known_models,
    live_workers,
    publish,
    throughput_by_model,
    withdraw,
)

KEYS = Keys()


def info(name: str = "w1", model: str = "m", throughput: float | None = 2.5, **changes: object) -> WorkerInfo:
    base = WorkerInfo(
        name=name, model=model, rows=8, rows_in_use=3, batching="continuous", throughput=throughput,
        steps_per_second=41.5, jobs_done=7, jobs_failed=1, started=1700000000.25, host="gpu-1", pid=4242,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def test_a_published_worker_reads_back_as_it_was_published(redis_client: Redis) -> None:
    published = info()
    await publish(redis_client, KEYS, published, ttl=30)
    (read,) = await live_workers(redis_client, KEYS)
    server_now = float((await redis_client.time())[0])
    assert abs(read.seen - server_now) < 5
    assert dataclasses.replace(read, seen=0.0) == published
    assert 0 < await redis_client.pttl(KEYS.worker("w1")) <= 30_000


async def test_speeds_not_measured_yet_are_absent_not_zero(redis_client: Redis) -> None:
    await publish(redis_client, KEYS, info(), ttl=30)
    await publish(redis_client, KEYS, info(throughput=None, steps_per_second=None), ttl=30)
    (read,) = await live_workers(redis_client, KEYS)
    assert (read.throughput, read.steps_per_second) == (None, None)
    assert await redis_client.hget(KEYS.worker("w1"), "throughput") is None


async def test_a_worker_that_stops_heart_beating_disappears(redis_client: Redis) -> None:
    await publish(redis_client, KEYS, info("dies"), ttl=0.3)
    await publish(redis_client, KEYS, info("lives"), ttl=30)
    assert [worker.name for worker in await live_workers(redis_client, KEYS)] == ["dies", "lives"]
    await asyncio.sleep(0.5)
    assert [worker.name for worker in await live_workers(redis_client, KEYS)] == ["lives"]
    assert await redis_client.zrange(KEYS.workers, 0, -1) == [b"lives"], "the dead worker's name is pruned"


async def test_a_worker_that_stops_cleanly_withdraws_at_once(redis_client: Redis) -> None:
    await publish(redis_client, KEYS, info("w1"), ttl=30)
    await withdraw(redis_client, KEYS, "w1")
    assert await live_workers(redis_client, KEYS) == []
    assert await redis_client.exists(KEYS.worker("w1"), KEYS.workers) == 0
    assert await known_models(redis_client, KEYS) == ["m"], "the model stays known after its worker left"


async def test_a_malformed_entry_is_skipped_not_fatal(redis_client: Redis) -> None:
    await publish(redis_client, KEYS, info("good"), ttl=30)
    await redis_client.hset(KEYS.worker("bad"), mapping={"model": "m", "rows": "eight"})
    await redis_client.zadd(KEYS.workers, {"bad": 1})
    assert [worker.name for worker in await live_workers(redis_client, KEYS)] == ["good"]


async def test_throughput_sums_the_measured_workers_of_each_model(redis_client: Redis) -> None:
    for worker in (info("a", "small", 2.0), info("b", "small", 3.5), info("c", "small", None), info("d", "large", 0.5)):
        await publish(redis_client, KEYS, worker, ttl=30)
    totals = throughput_by_model(await live_workers(redis_client, KEYS))
    assert totals == {"small": 5.5, "large": 0.5}
    assert throughput_by_model([info("c", "small", None)]) == {}


async def test_the_registry_lives_under_the_prefix(redis_client: Redis) -> None:
    other = Keys("other:")
    await publish(redis_client, other, info("w1"), ttl=30)
    assert await live_workers(redis_client, KEYS) == []
    assert [worker.name for worker in await live_workers(redis_client, other)] == ["w1"]
    assert await redis_client.exists("other:worker:w1", "other:workers", "other:models") == 3
