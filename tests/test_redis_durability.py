"""Admitted jobs survive ``kill -9`` of Redis (AOF, fsync always); the private server's own behaviour."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from generation.admission import UserLimits
from generation.redis import RedisJobs
from generation.redis.keys import GROUP
from tests.redis_helpers import MODEL, request
from tests.redis_server import RedisServer, RedisServerMissing, redis_server_binary


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A server of this test's own, since the test kills it."""
    server = RedisServer.launch(tmp_path / "redis")
    yield server
    server.stop()


async def snapshot(jobs: RedisJobs, job_ids: list[str]) -> tuple[Any, ...]:
    """Everything the queue knows: the start order, the records, the counters, who holds what."""
    pending = await jobs.client.xpending_range(jobs.keys.run, GROUP, "-", "+", 100)
    return (
        await jobs.ordered(MODEL), [await jobs.job(job_id) for job_id in job_ids], await jobs.waiting(),
        await jobs.active("u:ann"), [(p["message_id"], p["consumer"]) for p in pending],
    )


async def test_every_acknowledged_admission_survives_kill_9(own_server: RedisServer) -> None:
    limits = UserLimits(max_active=50, rate_count=50, rate_window=3600.0, queue_cap=500)
    jobs = RedisJobs(Redis.from_url(own_server.url))
    await jobs.setup()
    admitted: list[str] = []
    for number in range(40):
        owner = ["ann", "bob", "cat", None][number % 4]
        admitted += await jobs.admit([request(owner, prompt=f"jam {number}")], limits=limits)
    running = await jobs.take("worker-1", MODEL, 3)
    before = await snapshot(jobs, admitted)
    await jobs.aclose()

    pid = own_server.pid
    own_server.kill9()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # it is gone, without a shutdown
    own_server.restart()
    assert own_server.pid != pid

    jobs = RedisJobs(Redis.from_url(own_server.url))
    try:
        after = await snapshot(jobs, admitted)
        assert after == before
        assert all(record is not None for record in after[1])
        assert len(after[0]) == 37 and after[2] == 37
        assert await jobs.complete(running[0], b"audio")  # the leases held across the crash still work
        assert await jobs.active("u:ann") == 9  # ann's running job ended
    finally:
        await jobs.aclose()


def test_the_server_stops_by_its_pid(tmp_path: Path) -> None:
    server = RedisServer.launch(tmp_path / "redis")
    process = server.process
    assert process is not None
    client = redis.Redis.from_url(server.url, socket_connect_timeout=1.0)
    try:
        assert client.ping()
        server.stop()
        assert process.poll() is not None  # SIGTERM ended it
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
    finally:
        server.stop()
        client.close()


def test_a_missing_redis_server_is_an_error_that_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RedisServerMissing, match=r"redis-server is not installed.*scripts/setup\.sh"):
        redis_server_binary()
