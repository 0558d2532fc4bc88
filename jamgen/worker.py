"""``jamgen worker``: serve the Redis queue from this host's GPU (or CPU) until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from generation.errors import GenerationError
from generation.metrics import Metrics, serve_metrics
from generation.redis import RedisJobs
from generation.redis.settings import RedisSettings
from generation.redis.worker import RedisWorker
from generation.settings import EngineSettings
from generation.worker import Engine

log = logging.getLogger("jamgen")


class NoRedis(GenerationError):
    """``jamgen worker`` without ``REDIS_URL``."""


async def run_worker(engine_settings: EngineSettings, redis_settings: RedisSettings) -> int:
    if redis_settings.url is None:
        raise NoRedis("jamgen worker takes jobs from Redis: set REDIS_URL (see README, \"Scaling out\").")
    metrics = Metrics()
    server = serve_metrics(metrics, engine_settings.metrics_port, engine_settings.metrics_host)
    jobs = RedisJobs.from_url(
        redis_settings.url.get_secret_value(), prefix=redis_settings.prefix,
        attempts=engine_settings.job_attempts, keep_seconds=redis_settings.keep_seconds,
    )
    try:
        await _serve(jobs, engine_settings, redis_settings, metrics)
    finally:
        await jobs.aclose()
        if server is not None:
            server.close()
    return 0


async def _serve(jobs: RedisJobs, engine_settings: EngineSettings, redis_settings: RedisSettings,
                 metrics: Metrics) -> None:
    async with Engine(engine_settings) as engine:
        log.info("loading %s", engine_settings.model)
        await engine.warm_up()
        worker = RedisWorker(jobs, engine, timings=redis_settings.timings(), metrics=metrics)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, worker.stop)
        await worker.run()
