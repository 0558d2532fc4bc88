"""Which workers are alive, what they serve and how fast: the worker registry.

Every heartbeat a :class:`~generation.redis.worker.RedisWorker` publishes a :class:`WorkerInfo` as
the hash ``worker:{name}``, which expires unless the next heartbeat renews it (a dead worker
vanishes after ``ttl``), and scores its name in the ``workers`` sorted set with the server's time;
a worker that stops cleanly withdraws both. Readers call :func:`live_workers`, which also drops
the names whose hash has expired. The ``models`` sorted set remembers every model a worker has
served, so that readers can find its waiting jobs without scanning keys.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from generation.redis.keys import Keys
from generation.redis.records import fields_of, text

log = logging.getLogger(__name__)

_OPTIONAL = ("throughput", "steps_per_second")  # absent until measured


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as it last reported itself.

    ``throughput``: the engine's measured audio seconds per wall second (all rows together), and
    ``steps_per_second`` its decode steps per wall second; ``None`` until measured. ``started`` is
    the worker's own clock (Unix time); ``seen`` the server's, at the last heartbeat.
    """

    name: str
    model: str
    rows: int
    rows_in_use: int
    batching: str
    throughput: float | None
    steps_per_second: float | None
    jobs_done: int
    jobs_failed: int
    started: float
    host: str
    pid: int
    seen: float = 0.0

    def fields(self) -> dict[str, str]:
        """The hash's fields (``name`` is in the key, ``seen`` is Redis' to set; unmeasured speeds are left out)."""
        values = {key: value for key, value in asdict(self).items() if key not in ("name", "seen")}
        return {key: _encode(value) for key, value in values.items() if value is not None}

    @classmethod
    def decode(cls, name: str, raw: Mapping[str, str]) -> WorkerInfo:
        """The inverse of :meth:`fields`; raises ``KeyError``/``ValueError`` on a malformed hash."""
        values: dict[str, Any] = {"name": name}
        for spec in fields(cls):
            if spec.name == "name":
                continue
            if spec.name in _OPTIONAL and spec.name not in raw:
                values[spec.name] = None
            else:
                values[spec.name] = _decode(spec.type, raw[spec.name])
        return cls(**values)


def _encode(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _decode(kind: object, value: str) -> object:
    if kind == "int":
        return int(value)
    if kind in ("float", "float | None"):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"not a finite number: {value!r}")
        return number
    return value


@cache
def _source(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


async def publish(client: Redis, keys: Keys, info: WorkerInfo, ttl: float) -> None:
    """Say that ``info``'s worker is alive, for ``ttl`` seconds (renew it before then)."""
    script = client.register_script(_source("register"))
    args: list[str | int] = [math.ceil(ttl * 1000), info.name, info.model]
    for key, value in info.fields().items():
        args += [key, value]
    await script(keys=[keys.worker(info.name), keys.workers, keys.models], args=args)


async def withdraw(client: Redis, keys: Keys, name: str) -> None:
    """A worker that stops cleanly leaves the registry at once."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(keys.worker(name))
        pipe.zrem(keys.workers, name)
        await pipe.execute()


async def live_workers(client: Redis, keys: Keys) -> list[WorkerInfo]:
    """The workers whose last heartbeat is recent enough, least recently seen first."""
    script = client.register_script(_source("workers"))
    reply = await script(keys=[keys.workers], args=[keys.worker("")])
    workers: list[WorkerInfo] = []
    for name, flat in reply:
        raw = fields_of(dict(zip(flat[::2], flat[1::2], strict=True)))
        try:
            workers.append(WorkerInfo.decode(text(name), raw))
        except (KeyError, ValueError) as exc:
            log.warning("ignoring worker %s: its registry entry is malformed (%r)", text(name), exc)
    return workers


async def known_models(client: Redis, keys: Keys) -> list[str]:
    """Every model a worker has served (live or not) or a job was queued for, most recently served first."""
    return [text(model) for model in await client.zrange(keys.models, 0, -1, desc=True)]


def throughput_by_model(workers: list[WorkerInfo]) -> dict[str, float]:
    """model -> the summed throughput (audio s per wall s) of its workers that have measured one."""
    totals: dict[str, float] = {}
    for worker in workers:
        if worker.throughput is not None:
            totals[worker.model] = totals.get(worker.model, 0.0) + worker.throughput
    return totals
