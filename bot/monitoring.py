"""The bot's gauges in its Prometheus metrics (:mod:`generation.metrics`; served on ``JAMGEN_METRICS_PORT``).

The pipeline counts jobs as they end for their users, and times each from the request to the post.
The gauges are read here from the engine, on the event loop, once a second: the queue (every bot's,
on Redis), the rows (this process's engine, or the live workers'), and the speed.
"""

from __future__ import annotations

import asyncio

from generation.events import JobState
from generation.metrics import Metrics
from generation.redis.remote import RemoteEngine
from generation.worker import Engine


def update_gauges(engine: Engine | RemoteEngine, metrics: Metrics) -> None:
    metrics.queue_depth.set(len(engine.positions()))
    metrics.rows.set(engine.settings.max_batch)
    metrics.rows_in_use.set(sum(1 for job in engine.jobs() if job.state is JobState.RUNNING))
    metrics.speeds(engine.throughput.rate, None)


async def keep_gauges(engine: Engine | RemoteEngine, metrics: Metrics, every: float = 1.0) -> None:
    while True:
        update_gauges(engine, metrics)
        await asyncio.sleep(every)
