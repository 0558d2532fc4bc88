"""The fair take in Redis starts jobs in FairQueue's order (generation/redis, lua/take.lua)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import pytest
from redis.asyncio import Redis

from generation.admission import UserLimits
from generation.queue import FairQueue
from generation.redis import RedisJobs
from tests.redis_helpers import MODEL, ids, put, request


@dataclass(frozen=True)
class Job:
    job_id: str
    owner: str | None
    batch_key: str = MODEL


class Side(Protocol):
    async def put(self, job_id: str, owner: str | None) -> None: ...

    async def take(self, rows: int) -> list[str]: ...

    async def remove(self, job_id: str) -> bool: ...

    async def positions(self) -> dict[str, int]: ...


class FairSide:
    """The in-process queue, taking as a running batch's join check does (``take_ready``)."""

    def __init__(self) -> None:
        self.queue: FairQueue[Job] = FairQueue()

    async def put(self, job_id: str, owner: str | None) -> None:
        self.queue.put(Job(job_id, owner))

    async def take(self, rows: int) -> list[str]:
        return [job.job_id for job in self.queue.take_ready(rows, MODEL)]

    async def remove(self, job_id: str) -> bool:
        return self.queue.remove(job_id)

    async def positions(self) -> dict[str, int]:
        return self.queue.positions()


class RedisSide:
    def __init__(self, jobs: RedisJobs) -> None:
        self.jobs = jobs

    async def put(self, job_id: str, owner: str | None) -> None:
        await put(self.jobs, job_id, owner)

    async def take(self, rows: int) -> list[str]:
        return ids(await self.jobs.take("worker-1", MODEL, rows))

    async def remove(self, job_id: str) -> bool:
        return await self.jobs.remove(job_id)

    async def positions(self) -> dict[str, int]:
        return await self.jobs.positions(MODEL)


@dataclass
class Run:
    batches: list[list[str]] = field(default_factory=list)
    positions: list[dict[str, int]] = field(default_factory=list)  # after every step


async def play(side: Side, steps: tuple[str, ...]) -> Run:
    """``put ann`` (``put -``: no owner) queues ann's next job, ``ann1``, ``ann2``...; ``take 3``; ``remove ann1``."""
    run, count = Run(), Counter[str]()
    for step in steps:
        verb, arg = step.split()
        if verb == "put":
            count[arg] += 1
            await side.put(f"{arg}{count[arg]}", None if arg == "-" else arg)
        elif verb == "take":
            run.batches.append(await side.take(int(arg)))
        else:
            assert await side.remove(arg)
        run.positions.append(await side.positions())
    return run


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[str, ...]
    starts: list[list[str]]  # the batches taken, in order


def steps(text: str) -> tuple[str, ...]:
    return tuple(step.strip() for step in text.split(",") if step.strip())


SCENARIOS = [
    Scenario(
        "one user's backlog does not hold up the others; a user who left rejoins at the back",
        steps("put ann, put ann, put ann, put ann, put ann, put bob, put cat, take 1, put bob, take 1, take 1,"
              "put cat, take 1, take 1, take 1, take 1, take 1"),
        [["ann1"], ["bob1"], ["cat1"], ["ann2"], ["bob2"], ["cat2"], ["ann3"], ["ann4"]],
    ),
    Scenario(
        "a batch takes one job per owner in rotation order; one owner's jobs fill the rest",
        steps("put ann, put ann, put ann, put bob, put dan, take 3, take 3"),
        [["ann1", "bob1", "dan1"], ["ann2", "ann3"]],
    ),
    Scenario(
        "owners' k-th jobs are in round k, owners in order of arrival",
        steps("put ann, put ann, put bob, put cat, put cat, put bob, put dan, take 4, take 2, take 1"),
        [["ann1", "bob1", "cat1", "dan1"], ["ann2", "bob2"], ["cat2"]],
    ),
    Scenario(
        "jobs without an owner share one lane",
        steps("put -, put -, put -, put ann, take 2, take 2"),
        [["-1", "ann1"], ["-2", "-3"]],
    ),
    Scenario(
        "a removed job's owner keeps their turn while they have jobs waiting",
        steps("put ann, put bob, put ann, remove ann1, take 1, put ann, take 2"),
        [["ann2"], ["bob1", "ann3"]],
    ),
    Scenario(
        "an owner whose only job is removed leaves the rotation",
        steps("put ann, put bob, put cat, remove bob1, put bob, take 3"),
        [["ann1", "cat1", "bob2"]],
    ),
    Scenario(
        "a take asks for more rows than there are jobs, then for a job of an empty queue",
        steps("put ann, put bob, take 5, take 1, put cat, take 1"),
        [["ann1", "bob1"], [], ["cat1"]],
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[scenario.name for scenario in SCENARIOS])
async def test_fair_queue_and_the_redis_take_start_jobs_in_the_same_order(
    scenario: Scenario, redis_jobs: RedisJobs
) -> None:
    fair = await play(FairSide(), scenario.steps)
    in_redis = await play(RedisSide(redis_jobs), scenario.steps)
    assert fair.batches == scenario.starts
    assert in_redis.batches == scenario.starts
    assert in_redis.positions == fair.positions


async def test_random_sequences_agree_with_the_fair_queue(redis_client: Redis) -> None:
    """Puts, removes and takes of any size (several rounds included), chosen at random."""
    rng = random.Random(10)
    owners = ["ann", "bob", "cat", "dan", "-"]
    for _ in range(25):
        await redis_client.flushall()
        fair, in_redis = FairSide(), RedisSide(RedisJobs(redis_client))
        sequence: list[str] = []
        for number in range(30):
            waiting = fair.queue.ordered()
            roll = rng.random()
            if roll < 0.5 or not waiting:
                owner = rng.choice(owners)
                sequence.append(f"put {owner}")
                job_id, who = f"{owner}{number}", None if owner == "-" else owner
                await fair.put(job_id, who)
                await in_redis.put(job_id, who)
            elif roll < 0.65:
                job_id = rng.choice(waiting).job_id
                sequence.append(f"remove {job_id}")
                assert await fair.remove(job_id) and await in_redis.remove(job_id)
            else:
                rows = rng.randint(1, len(waiting) + 1)
                sequence.append(f"take {rows}")
                assert await in_redis.take(rows) == await fair.take(rows), sequence
            assert await in_redis.positions() == await fair.positions(), sequence


async def test_a_take_of_several_rounds_leaves_the_rest_of_the_promised_order(redis_jobs: RedisJobs) -> None:
    """Taking k jobs is taking one job k times: what is left starts in the order promised before, in both queues."""
    fair = FairSide()
    for job_id, owner in [("ann1", "ann"), ("ann2", "ann"), ("ann3", "ann"), ("bob1", "bob"), ("bob2", "bob")]:
        await put(redis_jobs, job_id, owner)
        await fair.put(job_id, owner)
    promised = await redis_jobs.ordered(MODEL)
    assert promised == ["ann1", "bob1", "ann2", "bob2", "ann3"] == [job.job_id for job in fair.queue.ordered()]
    assert ids(await redis_jobs.take("worker-1", MODEL, 3)) == promised[:3] == await fair.take(3)
    assert await redis_jobs.ordered(MODEL) == promised[3:] == [job.job_id for job in fair.queue.ordered()]


async def test_models_have_their_own_rotations(redis_jobs: RedisJobs) -> None:
    await put(redis_jobs, "ann-small", "ann", "small-model")
    await put(redis_jobs, "ann-big", "ann", "big-model")
    await put(redis_jobs, "bob-big", "bob", "big-model")
    assert await redis_jobs.positions("big-model") == {"ann-big": 1, "bob-big": 2}
    assert ids(await redis_jobs.take("big-worker", "big-model", 8)) == ["ann-big", "bob-big"]
    assert await redis_jobs.positions("small-model") == {"ann-small": 1}
    assert await redis_jobs.waiting() == 1


async def test_one_users_backlog_does_not_delay_four_users_on_a_one_row_worker(redis_jobs: RedisJobs) -> None:
    """Issue 10's example: an exempt user queues 10 jobs, then four users one each; one row."""
    limits = UserLimits()  # max 2 active, 5 per 10 min, 100 queued
    backlog = await redis_jobs.admit(
        [request("admin", prompt=f"backlog {n}") for n in range(10)], limits=limits, exempt=True
    )
    users = ["ann", "bob", "cat", "dan"]
    singles = [(await redis_jobs.admit([request(user)], limits=limits))[0] for user in users]
    started: list[str] = []
    while leases := await redis_jobs.take("one-row-worker", MODEL, 1):
        assert len(leases) == 1
        started.append(leases[0].job_id)
        assert await redis_jobs.complete(leases[0], b"audio")
    assert sorted(started) == sorted(backlog + singles)
    assert started[:6] == [backlog[0], *singles, backlog[1]]
