"""The bot's Prometheus metrics, scraped over HTTP from 127.0.0.1 while it serves the fake Discord."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bot.app import JamBot
from generation.metrics import MetricsServer, serve_metrics
from tests.bot_harness import World, running_bot
from tests.helpers import FaultyBackend, oom_over, tiny_backend
from tests.redis_helpers import Samples, scrape


@contextmanager
def endpoint(bot: JamBot) -> Iterator[MetricsServer]:
    server = serve_metrics(bot.metrics, 0, "127.0.0.1")  # port 0: a free one
    assert server is not None
    try:
        yield server
    finally:
        server.close()


async def samples(server: MetricsServer) -> Samples:
    return await asyncio.to_thread(scrape, server.port)


async def test_a_delivered_track_is_counted_and_timed_and_the_gauges_follow_the_engine(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:
        with endpoint(bot) as server:
            before = await samples(server)
            await world.result_of(await world.generate(prompt="counted"))
            await asyncio.sleep(1.2)  # the gauges are read once a second
            after = await samples(server)
    assert before[("jamgen_jobs_ended_total", (("state", "done"),))] == 0
    assert after[("jamgen_jobs_ended_total", (("state", "done"),))] == 1
    assert after[("jamgen_request_to_delivery_seconds_count", ())] == 1
    assert 0 < after[("jamgen_request_to_delivery_seconds_sum", ())] < 60
    assert after[("jamgen_rows", ())] == 8 and after[("jamgen_queue_depth", ())] == 0
    assert after[("jamgen_audio_seconds_per_second", ())] > 0, "the engine's measured speed"


async def test_failures_are_counted_by_reason(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    backend = FaultyBackend(tiny_backend(tiny_model_dir), fault=oom_over(0))  # every batch runs out of memory
    async with running_bot(world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend) as bot:
        with endpoint(bot) as server:
            interaction = await world.generate(prompt="too big")
            await world.fake.wait_for(lambda: "Out of GPU memory" in (
                interaction.original.content if interaction.original else ""), timeout=30)
            after = await samples(server)
    assert after[("jamgen_jobs_ended_total", (("state", "failed"),))] == 1
    assert after[("jamgen_failures_total", (("reason", "oom"),))] == 1
    assert after[("jamgen_failures_total", (("reason", "error"),))] == 0
