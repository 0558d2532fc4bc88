"""``jamgen stats`` with ``REDIS_URL``: the live workers, and the jobs waiting, in all and per guild.

The per-model and per-guild counts walk the waiting jobs of every model a worker has served
(the ``models`` set, the ``ready:`` rotations and their ``lane:`` lists, then one ``akey`` per job):
the work grows with the waiting jobs, not with the keys in Redis. The total is the queue's own
counter, so waiting jobs of a model no worker has ever served show up as the difference.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from generation.errors import GenerationError
from generation.redis import RedisJobs
from generation.redis.records import text
from generation.redis.registry import WorkerInfo, known_models, live_workers

DMS = "DMs"  # the guild column of jobs asked for outside a guild
TIMEOUT = 5.0  # seconds to connect to Redis, and for each answer


class RedisUnavailable(GenerationError):
    """``REDIS_URL`` does not answer."""


def guild_of(akey: str | None) -> str:
    """The guild of an admission key (the bot's ``"{guild_id}:{user_id}"``); :data:`DMS` when there is none."""
    guild, separator, _ = (akey or "").partition(":")
    return guild if separator and guild.isdigit() else DMS


@dataclass(frozen=True)
class Waiting:
    """Jobs waiting: ``total`` (all models), and those found under the served models, by model and by guild."""

    total: int
    by_model: dict[str, int]
    by_guild: dict[str, int]

    @property
    def unlisted(self) -> int:
        """Waiting jobs of models missing from ``models`` (not walked; queued by an older jamgen)."""
        return max(0, self.total - sum(self.by_model.values()))


async def waiting(jobs: RedisJobs) -> Waiting:
    """Count the waiting jobs by model and by guild; O(waiting jobs + models)."""
    total = await jobs.waiting()
    by_model: dict[str, int] = {}
    job_ids: list[str] = []
    for model in await known_models(jobs.client, jobs.keys):
        queued = await jobs.ordered(model)
        if queued:
            by_model[model] = len(queued)
            job_ids += queued
    async with jobs.client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(jobs.keys.job(job_id), "akey")
        akeys = await pipe.execute() if job_ids else []
    by_guild = Counter(guild_of(None if akey is None else text(akey)) for akey in akeys)
    return Waiting(total, by_model, dict(by_guild.most_common()))


async def collect(url: str, prefix: str) -> tuple[list[WorkerInfo], Waiting]:
    jobs = RedisJobs(Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT), prefix=prefix)
    try:
        return await live_workers(jobs.client, jobs.keys), await waiting(jobs)
    except RedisError as exc:
        raise RedisUnavailable(f"cannot read REDIS_URL: {exc} (start Redis, or fix REDIS_URL in .env)") from exc
    finally:
        await jobs.aclose()


def worker_lines(workers: list[WorkerInfo]) -> list[str]:
    if not workers:
        return ["workers: none live"]
    name_width = max(len(worker.name) for worker in workers)
    model_width = max(len(worker.model) for worker in workers)
    lines = [f"workers: {len(workers)} live"]
    lines.append(f"  {'name':<{name_width}}  {'model':<{model_width}}  {'rows':>7}  throughput")
    for worker in sorted(workers, key=lambda worker: (worker.model, worker.name)):
        rows = f"{worker.rows_in_use}/{worker.rows}"
        speed = "not measured yet" if worker.throughput is None else f"{worker.throughput:.2f} audio s/s"
        lines.append(f"  {worker.name:<{name_width}}  {worker.model:<{model_width}}  {rows:>7}  {speed}")
    return lines


def waiting_lines(queue: Waiting) -> list[str]:
    lines = [f"waiting jobs: {queue.total}"]
    by_model = dict(queue.by_model)
    if queue.unlisted:
        by_model["(models not listed)"] = queue.unlisted
    lines += _table("by model", by_model)
    lines += _table("by guild", queue.by_guild)
    return lines


def _table(title: str, counts: dict[str, int]) -> list[str]:
    if not counts:
        return []
    width = max(len(key) for key in counts)
    return [f"  {title}:"] + [f"    {key:<{width}}  {count:>6}" for key, count in counts.items()]


def run_redis_stats(url: str, prefix: str) -> None:
    """Print the workers and the queue (raises :class:`RedisUnavailable`)."""
    workers, queue = asyncio.run(collect(url, prefix))
    sys.stdout.write("\n".join(worker_lines(workers) + waiting_lines(queue)) + "\n")
