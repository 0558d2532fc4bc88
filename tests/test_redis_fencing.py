"""Only the worker that holds a job's current run may end it, report on it or give it back."""

from __future__ import annotations

import dataclasses
import json

from generation.redis import RedisJobs
from generation.redis.keys import GROUP
from tests.redis_helpers import MODEL, ids, put

KEEP_SECONDS = 120.0


async def test_a_worker_that_lost_its_job_cannot_end_it_and_the_winner_can(redis_jobs: RedisJobs) -> None:
    jobs = RedisJobs(redis_jobs.client, keep_seconds=KEEP_SECONDS)
    await put(jobs, "ann1", "ann")
    [lost] = await jobs.take("slow-worker", MODEL, 1)
    assert (await jobs.reclaim("reaper", min_idle=0)).requeued == ["ann1"]  # slow-worker looked dead
    [won] = await jobs.take("other-worker", MODEL, 1)
    assert (won.job_id, won.attempt) == ("ann1", 2)

    assert await jobs.complete(lost, b"stale audio") is False
    assert await jobs.fail(lost, "stale failure") is False
    assert await jobs.progress(lost, 3, 10) is False
    assert await jobs.release([lost]) == [False]
    assert await jobs.heartbeat([lost]) == {"ann1"}
    assert await jobs.result("ann1") is None
    stale_attempt = dataclasses.replace(won, attempt=1)  # the right entry and worker, an old attempt
    assert await jobs.complete(stale_attempt, b"stale audio") is False
    someone_else = dataclasses.replace(won, consumer="slow-worker")
    assert await jobs.complete(someone_else, b"stale audio") is False

    assert await jobs.heartbeat([won]) == set()
    assert await jobs.complete(won, b"the audio") is True
    assert await jobs.result("ann1") == b"the audio"
    ttl = await jobs.client.pttl(jobs.keys.result("ann1"))
    assert 0 < ttl <= KEEP_SECONDS * 1000
    record = await jobs.job("ann1")
    assert record is not None and record.state == "done"
    assert 0 < await jobs.client.pttl(jobs.keys.job("ann1")) <= KEEP_SECONDS * 1000
    assert [(event.job_id, event.kind) for event in await jobs.events()] == [("ann1", "finished")]
    assert await jobs.complete(won, b"twice") is False  # once only
    assert await jobs.fail(won, "after the fact") is False
    assert [(event.job_id, event.kind) for event in await jobs.events()] == [("ann1", "finished")]
    assert await jobs.client.xlen(jobs.keys.run) == 0  # every entry settled
    assert await jobs.client.xpending(jobs.keys.run, GROUP) == {
        "pending": 0, "min": None, "max": None, "consumers": []
    }


async def test_a_job_level_failure_ends_the_job_with_its_reason(redis_jobs: RedisJobs) -> None:
    await put(redis_jobs, "ann1", "ann")
    [lease] = await redis_jobs.take("worker-1", MODEL, 1)
    assert await redis_jobs.fail(lease, "The prompt made the model fail.") is True
    record = await redis_jobs.job("ann1")
    assert record is not None and (record.state, record.reason) == ("failed", "The prompt made the model fail.")
    [event] = await redis_jobs.events()
    assert (event.job_id, event.kind, event.reason) == ("ann1", "failed", "The prompt made the model fail.")
    assert await redis_jobs.active("u:ann") == 0
    assert await redis_jobs.dead_letters() == []  # the job's own failure, not a dead letter


async def test_released_jobs_go_back_to_the_front_in_order_with_their_attempt(redis_jobs: RedisJobs) -> None:
    for job_id, owner in [("ann1", "ann"), ("bob1", "bob"), ("cat1", "cat"), ("ann2", "ann")]:
        await put(redis_jobs, job_id, owner)
    taken = await redis_jobs.take("worker-1", MODEL, 2)
    assert ids(taken) == ["ann1", "bob1"]
    assert await redis_jobs.ordered(MODEL) == ["cat1", "ann2"]
    assert await redis_jobs.release(taken) == [True, True]
    assert await redis_jobs.ordered(MODEL) == ["ann1", "bob1", "cat1", "ann2"]
    for job_id in ("ann1", "bob1"):
        record = await redis_jobs.job(job_id)
        assert record is not None and (record.state, record.attempt, record.worker) == ("queued", 1, None)
    assert await redis_jobs.waiting() == 4
    assert await redis_jobs.events() == []
    again = await redis_jobs.take("worker-2", MODEL, 2)
    assert ids(again) == ["ann1", "bob1"] and [lease.attempt for lease in again] == [1, 1]
    assert await redis_jobs.complete(taken[0], b"stale") is False  # the old run's lease is over


async def test_progress_keeps_the_latest_snapshot_and_publishes_it(redis_jobs: RedisJobs) -> None:
    await put(redis_jobs, "ann1", "ann")
    [lease] = await redis_jobs.take("worker-1", MODEL, 1)
    pubsub = redis_jobs.client.pubsub()
    await pubsub.psubscribe(redis_jobs.keys.progress("*"))
    try:
        assert await pubsub.get_message(timeout=1.0) is not None  # the subscription's confirmation
        assert await redis_jobs.progress(lease, 5, 100)
        assert await redis_jobs.progress(lease, 40, 100)
        received = [await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0) for _ in range(2)]
    finally:
        await pubsub.aclose()
    record = await redis_jobs.job("ann1")
    assert record is not None and record.progress == (40, 100)
    payloads = [json.loads(message["data"]) for message in received if message is not None]
    assert payloads == [
        {"job": "ann1", "attempt": 1, "done": 5, "total": 100},
        {"job": "ann1", "attempt": 1, "done": 40, "total": 100},
    ]
    assert received[0] is not None and received[0]["channel"] == redis_jobs.keys.progress("ann1").encode()


async def test_a_waiting_job_can_be_cancelled_once_and_a_running_one_not_by_remove(redis_jobs: RedisJobs) -> None:
    await put(redis_jobs, "ann1", "ann")
    await put(redis_jobs, "ann2", "ann")
    [running] = await redis_jobs.take("worker-1", MODEL, 1)
    assert await redis_jobs.remove(running.job_id) is False
    assert await redis_jobs.remove("ann2", "cancelled by a moderator") is True
    assert await redis_jobs.remove("ann2") is False
    assert await redis_jobs.remove("nobody") is False
    [event] = await redis_jobs.events()
    assert (event.job_id, event.kind, event.reason) == ("ann2", "cancelled", "cancelled by a moderator")
    assert await redis_jobs.active("u:ann") == 1 and await redis_jobs.waiting() == 0
