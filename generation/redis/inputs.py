"""Input files (an Extend's clip, a melody, codes to extend) travel through Redis as bytes, never as paths.

The bot stores each input file under ``input:{sha256}`` with a TTL and puts ``redis-input:<sha256>``
in the request instead of its path; the worker fetches the bytes into a file of its own before the
job runs. The same file given twice is stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from pathlib import Path

from redis.asyncio import Redis

from generation.errors import InvalidJob
from generation.jobs import JobRequest
from generation.redis.keys import Keys

SCHEME = "redis-input:"
FIELDS = ("continue_from", "melody_from", "continue_codes")
MISSING = "{name} expired from the queue before a worker could take this job; please ask again."
NAMES = {
    "continue_from": "The clip to extend", "melody_from": "The melody file", "continue_codes": "The codes to extend",
}


async def upload_inputs(client: Redis, keys: Keys, request: JobRequest, keep_seconds: float) -> JobRequest:
    """``request`` with every input file stored in Redis (for ``keep_seconds``) and referred to by its digest."""
    update: dict[str, str] = {}
    for name in FIELDS:
        value = getattr(request, name)
        if value is None or value.startswith(SCHEME):
            continue
        data = await asyncio.to_thread(Path(value).read_bytes)
        digest = hashlib.sha256(data).hexdigest()
        await client.set(keys.input(digest), data, px=max(1, math.ceil(keep_seconds * 1000)))
        update[name] = SCHEME + digest
    return request.model_copy(update=update) if update else request


async def fetch_inputs(client: Redis, keys: Keys, request: JobRequest, folder: Path, tag: str) -> JobRequest:
    """``request`` with every input fetched from Redis into ``folder`` (files named after ``tag``).

    Raises :class:`InvalidJob` when an input has expired (the job cannot run anywhere).
    """
    update: dict[str, str] = {}
    for name in FIELDS:
        value = getattr(request, name)
        if value is None or not value.startswith(SCHEME):
            continue
        data = await client.get(keys.input(value.removeprefix(SCHEME)))
        if data is None:
            raise InvalidJob(MISSING.format(name=NAMES[name]))
        path = folder / f"{tag}-{name}"
        await asyncio.to_thread(_write, path, data if isinstance(data, bytes) else data.encode())
        update[name] = str(path)
    return request.model_copy(update=update) if update else request


def fetched_files(folder: Path, tag: str) -> list[Path]:
    """The files :func:`fetch_inputs` wrote for ``tag`` (to remove once its job has ended)."""
    return [folder / f"{tag}-{name}" for name in FIELDS]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
