"""Per-user limits and the queue cap, checked and charged atomically in Redis (lua/admit.lua)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from generation.admission import Admission, RateLimited, UserLimits
from generation.redis import DuplicateJob, RedisJobs
from tests.redis_helpers import MODEL, request
from tests.redis_server import RedisServer


async def verdict(jobs: RedisJobs, owner: str, limits: UserLimits, **options: object) -> str | RateLimited:
    try:
        await jobs.admit([request(owner)], limits=limits, **options)  # type: ignore[arg-type]
    except RateLimited as refusal:
        return refusal
    return "ok"


def in_process(admission: Admission, key: str, limits: UserLimits, *, active: int, queued: int) -> str | RateLimited:
    try:
        admission.admit(key, limits, active=active, queued_total=queued)
    except RateLimited as refusal:
        return refusal
    return "ok"


async def test_eight_clients_at_once_get_exactly_the_burst(redis_server: RedisServer, redis_jobs: RedisJobs) -> None:
    limits = UserLimits(max_active=1000, rate_count=41, rate_window=3600.0, queue_cap=1000)
    clients = [RedisJobs(Redis.from_url(redis_server.url)) for _ in range(8)]

    async def burst(jobs: RedisJobs) -> list[str | RateLimited]:
        return [await verdict(jobs, "ann", limits) for _ in range(12)]

    try:
        verdicts = [v for vs in await asyncio.gather(*(burst(jobs) for jobs in clients)) for v in vs]
    finally:
        await asyncio.gather(*(jobs.aclose() for jobs in clients))
    refusals = [v for v in verdicts if isinstance(v, RateLimited)]
    assert verdicts.count("ok") == 41
    assert len(refusals) == 8 * 12 - 41
    assert {refusal.reason for refusal in refusals} == {"rate"}
    assert await redis_jobs.waiting() == 41
    assert await redis_jobs.active("u:ann") == 41
    assert len(await redis_jobs.positions(MODEL)) == 41


async def test_one_client_gets_the_verdicts_of_the_in_process_admission(redis_jobs: RedisJobs) -> None:
    limits = UserLimits(max_active=1000, rate_count=41, rate_window=3600.0, queue_cap=1000)
    admission = Admission(clock=lambda: 0.0)  # the burst takes well under a second
    expected: list[str | RateLimited] = []
    for _ in range(60):
        admitted = expected.count("ok")
        expected.append(in_process(admission, "ann", limits, active=admitted, queued=admitted))
    got = [await verdict(redis_jobs, "ann", limits) for _ in range(60)]
    assert [v if v == "ok" else v.reason for v in got] == [v if v == "ok" else v.reason for v in expected]
    assert got.count("ok") == 41
    for ours, theirs in zip(got[41:], expected[41:], strict=True):
        assert isinstance(ours, RateLimited) and isinstance(theirs, RateLimited)
        assert theirs.retry_after is not None and ours.retry_after is not None
        assert theirs.retry_after - 5.0 < ours.retry_after <= theirs.retry_after  # the same bucket, seconds later
        assert str(ours).rsplit(" in ", 1)[0] == str(theirs).rsplit(" in ", 1)[0]
        assert str(ours).startswith("You can start 41 jobs every 1 h; try again in ")


async def test_a_token_comes_back_after_one_emission_interval(redis_jobs: RedisJobs) -> None:
    limits = UserLimits(max_active=100, rate_count=2, rate_window=4.0, queue_cap=100)  # a token per 2 s
    assert await verdict(redis_jobs, "ann", limits) == "ok"
    assert await verdict(redis_jobs, "ann", limits) == "ok"
    refusal = await verdict(redis_jobs, "ann", limits)
    assert isinstance(refusal, RateLimited) and refusal.reason == "rate"
    assert refusal.retry_after is not None and 1.0 < refusal.retry_after <= 2.0  # 2 s less the time passed
    assert await verdict(redis_jobs, "bob", limits) == "ok"  # buckets are per user
    await asyncio.sleep(refusal.retry_after + 0.05)
    assert await verdict(redis_jobs, "ann", limits) == "ok"
    again = await verdict(redis_jobs, "ann", limits)
    assert isinstance(again, RateLimited) and again.retry_after is not None and again.retry_after > 1.0


async def test_max_active_counts_queued_and_running_jobs_until_they_end(redis_jobs: RedisJobs) -> None:
    limits = UserLimits(max_active=2, rate_count=100, rate_window=60.0, queue_cap=100)
    first, second = [(await redis_jobs.admit([request("ann")], limits=limits))[0] for _ in range(2)]
    refusal = await verdict(redis_jobs, "ann", limits)
    assert isinstance(refusal, RateLimited)
    assert (refusal.reason, refusal.retry_after) == ("active", None)
    expected = in_process(Admission(), "ann", limits, active=2, queued=2)
    assert str(refusal) == str(expected)
    assert "try again when one of your 2 jobs finishes" in str(refusal)

    [lease] = await redis_jobs.take("worker-1", MODEL, 1)
    assert lease.job_id == first
    assert isinstance(await verdict(redis_jobs, "ann", limits), RateLimited)  # running still counts
    assert await redis_jobs.complete(lease, b"audio")
    assert await verdict(redis_jobs, "ann", limits) == "ok"
    assert isinstance(await verdict(redis_jobs, "ann", limits), RateLimited)
    assert await redis_jobs.remove(second)  # a cancelled job ends too
    assert await redis_jobs.active("u:ann") == 1
    assert await verdict(redis_jobs, "ann", limits) == "ok"


async def test_jobs_admitted_under_one_charge_count_once_until_the_last_ends(redis_jobs: RedisJobs) -> None:
    """A request for three takes counts one against max_active and the rate, as a ticket does in process."""
    limits = UserLimits(max_active=2, rate_count=2, rate_window=600.0, queue_cap=100)
    takes = await redis_jobs.admit([request("ann")] * 3, limits=limits, charge=1)
    assert await redis_jobs.active("u:ann") == 1 and await redis_jobs.waiting() == 3
    single = await redis_jobs.admit([request("ann")], limits=limits)  # the second of two: allowed
    refusal = await verdict(redis_jobs, "ann", limits)
    assert isinstance(refusal, RateLimited) and refusal.reason == "active"
    leases = await redis_jobs.take("worker-1", MODEL, 4)
    assert [lease.job_id for lease in leases] == [*takes, *single]  # ann's lane, in order
    for lease in leases:
        if lease.job_id in takes[:2]:
            assert await redis_jobs.complete(lease, b"audio")
    assert await redis_jobs.active("u:ann") == 2, "two of the three takes ended: the charge is still held"
    [last] = [lease for lease in leases if lease.job_id == takes[2]]
    assert await redis_jobs.fail(last, "a failure ends it too")
    assert await redis_jobs.active("u:ann") == 1
    assert await redis_jobs.client.exists(redis_jobs.keys.prefix + f"group:{takes[0]}") == 0


async def test_more_jobs_at_once_than_allowed_are_refused_whole(redis_jobs: RedisJobs) -> None:
    limits = UserLimits(max_active=2, rate_count=100, rate_window=60.0, queue_cap=100)
    with pytest.raises(RateLimited) as refused:
        await redis_jobs.admit([request("ann")] * 3, limits=limits)
    assert refused.value.reason == "active"
    assert str(refused.value) == "You can have at most 2 jobs at a time; this asks for 3."
    assert await redis_jobs.waiting() == 0 and await redis_jobs.active("u:ann") == 0


async def test_the_queue_cap_counts_waiting_jobs_of_everyone(redis_jobs: RedisJobs) -> None:
    limits = UserLimits(max_active=5, rate_count=100, rate_window=60.0, queue_cap=3)
    for user in ("ann", "bob", "cat"):
        assert await verdict(redis_jobs, user, limits) == "ok"
    refusal = await verdict(redis_jobs, "dan", limits)
    assert isinstance(refusal, RateLimited)
    assert (refusal.reason, refusal.retry_after) == ("queue_full", None)
    assert str(refusal) == str(in_process(Admission(), "dan", limits, active=0, queued=3))
    assert str(refusal) == "The queue is full (3 of 3 places taken); try again once some of them have started."
    estimated = await verdict(redis_jobs, "dan", limits, queue_retry_after=42.0)
    assert isinstance(estimated, RateLimited) and estimated.retry_after == 42.0
    assert str(estimated).endswith("try again in 42 s.")
    exempt = await verdict(redis_jobs, "admin", limits, exempt=True)
    assert isinstance(exempt, RateLimited) and exempt.reason == "queue_full"  # the cap protects the machine

    assert len(await redis_jobs.take("worker-1", MODEL, 1)) == 1  # a running job leaves the queue
    assert await verdict(redis_jobs, "dan", limits) == "ok"


async def test_a_refused_admission_charges_nothing(redis_jobs: RedisJobs) -> None:
    limits = UserLimits(max_active=1, rate_count=2, rate_window=3600.0, queue_cap=100)
    assert await verdict(redis_jobs, "ann", limits) == "ok"
    for _ in range(5):
        refusal = await verdict(redis_jobs, "ann", limits)
        assert isinstance(refusal, RateLimited) and refusal.reason == "active"
    [lease] = await redis_jobs.take("worker-1", MODEL, 1)
    assert await redis_jobs.complete(lease, b"audio")
    assert await verdict(redis_jobs, "ann", limits) == "ok"  # the second token was never spent
    assert await redis_jobs.waiting() == 1


async def test_exempt_owners_skip_the_per_user_limits_and_are_not_charged(redis_jobs: RedisJobs) -> None:
    limits = UserLimits(max_active=1, rate_count=1, rate_window=3600.0, queue_cap=100)
    await redis_jobs.admit([request("admin")] * 4, limits=limits, exempt=True)
    assert await redis_jobs.active("u:admin") == 4  # counted (released as they end), never checked
    refusal = await verdict(redis_jobs, "admin", limits)  # the same owner without the exemption
    assert isinstance(refusal, RateLimited) and refusal.reason == "active"
    for lease in await redis_jobs.take("worker-1", MODEL, 4):
        assert await redis_jobs.complete(lease, b"audio")
    assert await verdict(redis_jobs, "admin", limits) == "ok"  # the one token is still there
    refusal = await verdict(redis_jobs, "other", UserLimits(max_active=5, rate_count=1, rate_window=3600.0))
    assert refusal == "ok"


async def test_a_job_id_in_use_is_refused_and_nothing_is_charged(redis_jobs: RedisJobs) -> None:
    limits = UserLimits(max_active=5, rate_count=5, rate_window=3600.0)
    await redis_jobs.admit([request("ann")], limits=limits, job_ids=["job-1"])
    with pytest.raises(DuplicateJob):
        await redis_jobs.admit([request("bob"), request("bob")], limits=limits, job_ids=["job-2", "job-1"])
    assert await redis_jobs.active("u:bob") == 0
    assert await redis_jobs.positions(MODEL) == {"job-1": 1}
    with pytest.raises(ValueError, match="one owner"):
        await redis_jobs.admit([request("ann"), request("bob")], limits=limits)


async def test_a_long_track_takes_more_tokens_but_counts_once_against_max_active(redis_jobs: RedisJobs) -> None:
    """The bot's 75 s track: charge 1 (one request in progress), tokens 3 (its 30 s units), as in process."""
    limits = UserLimits(max_active=5, rate_count=4, rate_window=400.0, queue_cap=100)
    assert await verdict(redis_jobs, "ann", limits, charge=1, tokens=3) == "ok"
    assert await redis_jobs.active("u:ann") == 1
    refused = await verdict(redis_jobs, "ann", limits, charge=1, tokens=2)
    assert isinstance(refused, RateLimited) and refused.reason == "rate"
    assert str(refused).startswith("You can start 4 jobs every 6 min 40 s (this request counts as 2); try again in ")
    assert refused.retry_after is not None and 99.0 < refused.retry_after <= 100.0  # one token back per 100 s
    assert await verdict(redis_jobs, "ann", limits, charge=1, tokens=1) == "ok"  # the fourth token
    admission = Admission(clock=lambda: 0.0)
    admission.admit("ann", limits, active=0, queued_total=0, tokens=3)
    theirs = in_process_tokens(admission, limits, 2)
    assert isinstance(theirs, RateLimited) and str(theirs).rsplit(" in ", 1)[0] == str(refused).rsplit(" in ", 1)[0]


def in_process_tokens(admission: Admission, limits: UserLimits, tokens: int) -> str | RateLimited:
    try:
        admission.admit("ann", limits, active=1, queued_total=1, tokens=tokens)
    except RateLimited as refusal:
        return refusal
    return "ok"
