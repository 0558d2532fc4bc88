"""Workers hold jobs under a lease: pending entries, heartbeats, reclaim, the last attempt, dead letters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from generation.redis import Lease, RedisJobs
from generation.redis.keys import GROUP
from tests.redis_helpers import MODEL, ids, put


async def pending(jobs: RedisJobs, consumer: str) -> list[dict[str, Any]]:
    """``consumer``'s pending entries: message_id, consumer, time_since_delivered, times_delivered."""
    return list(await jobs.client.xpending_range(jobs.keys.run, GROUP, "-", "+", 100, consumername=consumer))


def entries(leases: list[Lease]) -> list[bytes]:
    return [lease.entry.encode() for lease in leases]


async def test_a_take_puts_the_jobs_in_the_takers_pending_list(redis_jobs: RedisJobs) -> None:
    for job_id, owner in [("ann1", "ann"), ("bob1", "bob"), ("cat1", "cat")]:
        await put(redis_jobs, job_id, owner)
    first = await redis_jobs.take("worker-1", MODEL, 2)
    second = await redis_jobs.take("worker-2", MODEL, 5)
    assert ids(first) == ["ann1", "bob1"] and ids(second) == ["cat1"]
    assert [p["message_id"] for p in await pending(redis_jobs, "worker-1")] == entries(first)
    assert [p["message_id"] for p in await pending(redis_jobs, "worker-2")] == entries(second)
    for lease in first:
        record = await redis_jobs.job(lease.job_id)
        assert record is not None
        assert (record.state, record.worker, record.entry, record.attempt) == ("running", "worker-1", lease.entry, 1)
        assert lease.attempt == 1 and not lease.alone
        assert lease.request().owner == record.owner
    assert await redis_jobs.waiting() == 0
    assert await redis_jobs.take("worker-3", MODEL, 1) == []


async def test_a_heartbeat_keeps_a_job_while_a_dead_workers_job_goes_back_to_the_front(
    redis_jobs: RedisJobs,
) -> None:
    await put(redis_jobs, "ann1", "ann")
    await put(redis_jobs, "bob1", "bob")
    [dead] = await redis_jobs.take("dead-worker", MODEL, 1)
    [alive] = await redis_jobs.take("live-worker", MODEL, 1)
    await put(redis_jobs, "ann2", "ann")
    await put(redis_jobs, "cat1", "cat")
    assert await redis_jobs.ordered(MODEL) == ["ann2", "cat1"]

    await asyncio.sleep(2.1)
    assert await redis_jobs.heartbeat([alive]) == set()
    reclaimed = await redis_jobs.reclaim("reaper", min_idle=2.0)
    assert reclaimed.requeued == ["ann1"] and reclaimed.dead == []
    assert await redis_jobs.ordered(MODEL) == ["ann1", "cat1", "ann2"]  # ann's lane, front; ann keeps her turn
    ann1 = await redis_jobs.job("ann1")
    assert ann1 is not None and (ann1.state, ann1.attempt, ann1.worker) == ("queued", 2, None)
    assert await pending(redis_jobs, "dead-worker") == []
    [held] = await pending(redis_jobs, "live-worker")
    assert held["message_id"] == alive.entry.encode()
    assert held["times_delivered"] == 1  # heartbeats do not count as deliveries
    bob1 = await redis_jobs.job("bob1")
    assert bob1 is not None and (bob1.state, bob1.attempt) == ("running", 1)
    assert await redis_jobs.heartbeat([dead]) == {"ann1"}  # the dead worker's lease is gone

    await asyncio.sleep(2.1)  # no heartbeat this time
    assert (await redis_jobs.reclaim("reaper", min_idle=2.0)).requeued == ["bob1"]


async def test_jobs_put_back_keep_the_order_they_were_taken_in(redis_jobs: RedisJobs) -> None:
    for job_id, owner in [("ann1", "ann"), ("bob1", "bob"), ("ann2", "ann"), ("cat1", "cat")]:
        await put(redis_jobs, job_id, owner)
    taken = await redis_jobs.take("worker-1", MODEL, 3)
    assert ids(taken) == ["ann1", "bob1", "cat1"]
    assert (await redis_jobs.reclaim("reaper", min_idle=0)).requeued == ["ann1", "bob1", "cat1"]
    assert await redis_jobs.ordered(MODEL) == ["ann1", "bob1", "cat1", "ann2"]
    assert await redis_jobs.waiting() == 4


async def test_the_last_attempt_runs_alone_and_then_the_job_is_dead_lettered(redis_jobs: RedisJobs) -> None:
    assert redis_jobs.attempts == 2
    await put(redis_jobs, "ann1", "ann")
    await put(redis_jobs, "bob1", "bob")
    [first_run] = await redis_jobs.take("worker-1", MODEL, 1)
    await asyncio.sleep(2.1)
    [bob1] = await redis_jobs.take("worker-2", MODEL, 1)
    reclaimed = await redis_jobs.reclaim("reaper", min_idle=2.0)  # worker-1 died on ann1
    assert reclaimed.requeued == ["ann1"] and reclaimed.alone == ["ann1"]
    assert await redis_jobs.release([bob1]) == [True]  # worker-2 stops: bob1 goes back to the front
    await put(redis_jobs, "ann2", "ann")
    assert await redis_jobs.ordered(MODEL) == ["bob1", "ann1", "ann2"]

    [bob1] = await redis_jobs.take("worker-3", MODEL, 4)  # ann1 ends the take: it does not run beside others
    assert bob1.job_id == "bob1"
    assert await redis_jobs.take("worker-3", MODEL, 3) == []  # nor beside what worker-3 runs
    [last_run] = await redis_jobs.take("worker-4", MODEL, 4)  # an idle worker takes ann1, alone
    assert (last_run.job_id, last_run.attempt, last_run.alone) == ("ann1", 2, True)
    assert await redis_jobs.take("worker-4", MODEL, 3) == []  # and nothing joins it
    [ann2] = await redis_jobs.take("worker-5", MODEL, 4)
    assert ann2.job_id == "ann2"
    assert await redis_jobs.complete(first_run, b"too late") is False
    assert await redis_jobs.complete(bob1, b"audio") and await redis_jobs.complete(ann2, b"audio")

    reclaimed = await redis_jobs.reclaim("reaper", min_idle=0)  # worker-4 died on it too
    assert reclaimed.dead == ["ann1"] and reclaimed.requeued == []
    record = await redis_jobs.job("ann1")
    assert record is not None and record.state == "failed"
    assert record.reason == "The worker stopped 2 times while making this track, so it was dropped. Try another prompt."
    [letter] = await redis_jobs.dead_letters()
    assert (letter["job"], letter["attempts"], letter["worker"]) == ("ann1", "2", "worker-4")
    events = [(event.job_id, event.kind, event.reason) for event in await redis_jobs.events()]
    assert events == [("bob1", "finished", None), ("ann2", "finished", None), ("ann1", "failed", record.reason)]
    assert await redis_jobs.active("u:ann") == 0 and await redis_jobs.waiting() == 0
    assert await redis_jobs.ordered(MODEL) == []


async def test_with_one_attempt_a_reclaimed_job_is_dead_at_once(redis_client: Redis) -> None:
    jobs = RedisJobs(redis_client, attempts=1)
    await jobs.setup()
    await put(jobs, "ann1", "ann")
    await jobs.take("worker-1", MODEL, 1)
    reclaimed = await jobs.reclaim("reaper", min_idle=0)
    assert reclaimed.dead == ["ann1"]
    record = await jobs.job("ann1")
    assert record is not None and record.reason is not None and "stopped once" in record.reason


async def test_only_consumers_with_nothing_pending_are_forgotten(redis_jobs: RedisJobs) -> None:
    await put(redis_jobs, "ann1", "ann")
    await put(redis_jobs, "bob1", "bob")
    [busy] = await redis_jobs.take("busy-worker", MODEL, 1)
    [done] = await redis_jobs.take("done-worker", MODEL, 1)
    assert await redis_jobs.complete(done, b"audio")
    reclaimed = await redis_jobs.reclaim("reaper", min_idle=60.0, forget_idle=0)
    assert "done-worker" in reclaimed.forgotten and "busy-worker" not in reclaimed.forgotten
    assert reclaimed.requeued == []
    consumers = {c["name"]: c["pending"] for c in await redis_jobs.client.xinfo_consumers(redis_jobs.keys.run, GROUP)}
    assert consumers.get(b"busy-worker") == 1 and b"done-worker" not in consumers
    assert await redis_jobs.complete(busy, b"audio")


async def test_a_take_creates_a_missing_group_and_refuses_entries_nobody_was_given(redis_client: Redis) -> None:
    jobs = RedisJobs(redis_client)  # no setup(): the take creates the group (at 0) itself
    await put(jobs, "ann1", "ann")
    [lease] = await jobs.take("worker-1", MODEL, 1)
    assert [p["message_id"] for p in await pending(jobs, "worker-1")] == [lease.entry.encode()]

    await put(jobs, "bob1", "bob")
    await redis_client.xadd(jobs.keys.run, {"job": "stray"})  # not added by a take: nobody read it
    with pytest.raises(ResponseError, match="entries no worker was given"):
        await jobs.take("worker-2", MODEL, 1)
    assert await jobs.ordered(MODEL) == ["bob1"] and await jobs.waiting() == 1  # nothing was taken
    assert await pending(jobs, "worker-2") == []
