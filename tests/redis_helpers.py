"""Small helpers shared by the Redis tests."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

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


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """The samples ``/metrics`` on 127.0.0.1:``port`` serves: (name, sorted labels) -> value. Blocking."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        body = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
