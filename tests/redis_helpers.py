"""Small helpers shared by the Redis tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from generation.admission import UserLimits
from generation.jobs import JobRequest
from generation.redis import Lease, RedisJobs

MODEL = "test-model"
NO_LIMITS = UserLimits(max_active=10**6, rate_count=10**6, rate_window=1.0, queue_cap=10**6)


def request(owner: str | None, model: str = MODEL, prompt: str = "a jam") -> JobRequest:
    return JobRequest.create(prompt=prompt, owner=owner, model=model, duration=1.0)


async def put(jobs: RedisJobs, job_id: str, owner: str | None, model: str = MODEL) -> None:
    """Queue one job under ``job_id``, with no limits in the way."""
    await jobs.admit([request(owner, model)], limits=NO_LIMITS, job_ids=[job_id])


def ids(leases: list[Lease]) -> list[str]:
    return [lease.job_id for lease in leases]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 60.0, explain: Callable[[], str] = str) -> None:
    """Poll ``check`` until it holds; fail the test after ``timeout`` seconds, with ``explain()`` appended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout:g} s\n{explain()}")
        await asyncio.sleep(0.05)
