"""Small helpers shared by the Redis tests."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from generation.admission import UserLimits
from generation.backends.base import Backend
from generation.jobs import JobRequest
from generation.redis import Lease, RedisJobs
from generation.redis.settings import WorkerTimings
from generation.redis.worker import RedisWorker
from generation.settings import EngineSettings
from generation.worker import Engine
from tests.helpers import FaultyBackend

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


FAST = WorkerTimings(heartbeat=0.2, reclaim_after=30.0, reap_every=60.0, poll=0.2, retry=0.05, grace=30.0)


@asynccontextmanager
async def serving(
    jobs: RedisJobs, backend: Backend, model_dir: Path, timings: WorkerTimings = FAST, **settings: object
) -> AsyncIterator[tuple[RedisWorker, FaultyBackend]]:
    """A worker serving ``model_dir`` (the shared tiny backend, wrapped to record its batches) until the block ends."""
    wrapped = FaultyBackend(backend)
    base: dict[str, object] = {"device": "cpu", "model": str(model_dir), "batch_window": 0.3, "progress_interval": 0.01}
    engine = Engine(EngineSettings(**(base | settings)), backend_factory=lambda _: wrapped)  # type: ignore[arg-type]
    async with engine:
        worker = RedisWorker(jobs, engine, name="worker-a", timings=timings)
        task = asyncio.create_task(worker.run())
        try:
            yield worker, wrapped
        finally:
            worker.stop()
            await asyncio.wait_for(task, 60)


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
