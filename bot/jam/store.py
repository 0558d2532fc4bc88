"""Where jams live: the bot's SQLite file, or Redis when the bot is scaled out (then any process that serves the
guild after a restart, on any host, finds them).

A jam is one JSON document; each section's file and codes are blobs beside it (a 30 s section is about 12 KB of
codes and a few hundred KB of audio). Closed jams are pruned with the journal's retention.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import aiosqlite
from redis.asyncio import Redis

from bot.jam.model import Jam, JamState
from bot.sqlite import write

SCHEMA = """
CREATE TABLE IF NOT EXISTS jams (
    jam_id TEXT PRIMARY KEY,
    channel_id INTEGER NOT NULL,
    thread_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jams_by_channel ON jams (channel_id, state);
CREATE TABLE IF NOT EXISTS jam_blobs (jam_id TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL,
                                      PRIMARY KEY (jam_id, name));
"""


def blob_name(number: int, kind: str) -> str:
    """``kind``: "audio" (the section's file) or "codes" (its new codes, .npy)."""
    return f"{number}:{kind}"


async def section_blob(store: JamStore, jam_id: str, number: int, kind: str) -> bytes:
    """A section's kept ``kind`` (see :func:`blob_name`); a missing one is an error (every posted section has both)."""
    data = await store.get_blob(jam_id, blob_name(number, kind))
    if data is None:
        raise RuntimeError(f"jam {jam_id}: section {number}'s {kind} is missing")
    return data


class JamStore(Protocol):
    async def save(self, jam: Jam) -> None: ...
    async def get(self, jam_id: str) -> Jam | None: ...
    async def open_jams(self) -> list[Jam]: ...  # oldest first
    async def put_blob(self, jam_id: str, name: str, data: bytes) -> None: ...
    async def get_blob(self, jam_id: str, name: str) -> bytes | None: ...
    async def prune(self, before: float) -> int: ...


class SqliteJams:
    """In the bot's SQLite file, on the store's connection (``lock``: one statement sequence at a time)."""

    def __init__(self, db: aiosqlite.Connection, lock: asyncio.Lock) -> None:
        self._db = db
        self._lock = lock

    async def save(self, jam: Jam) -> None:
        await self._write(
            "INSERT INTO jams (jam_id, channel_id, thread_id, state, data, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(jam_id) DO UPDATE SET state = excluded.state, data = excluded.data, "
            "updated_at = excluded.updated_at",
            (jam.id, jam.channel_id, jam.thread_id, jam.state.value, jam.model_dump_json(), time.time()),
        )

    async def get(self, jam_id: str) -> Jam | None:
        rows = await self._fetch("SELECT data FROM jams WHERE jam_id = ?", (jam_id,))
        return Jam.model_validate_json(rows[0][0]) if rows else None

    async def open_jams(self) -> list[Jam]:
        rows = await self._fetch("SELECT data FROM jams WHERE state = ?", (JamState.OPEN.value,))
        return sorted((Jam.model_validate_json(data) for (data,) in rows), key=lambda jam: jam.created_at)

    async def put_blob(self, jam_id: str, name: str, data: bytes) -> None:
        await self._write("INSERT OR REPLACE INTO jam_blobs (jam_id, name, data) VALUES (?, ?, ?)",
                          (jam_id, name, data))

    async def get_blob(self, jam_id: str, name: str) -> bytes | None:
        rows = await self._fetch("SELECT data FROM jam_blobs WHERE jam_id = ? AND name = ?", (jam_id, name))
        return bytes(rows[0][0]) if rows else None

    async def prune(self, before: float) -> int:
        async with self._lock:
            async with self._db.execute("SELECT jam_id FROM jams WHERE state = ? AND updated_at < ?",
                                        (JamState.CLOSED.value, before)) as cursor:
                ids = [(jam_id,) for (jam_id,) in await cursor.fetchall()]
            await self._db.executemany("DELETE FROM jam_blobs WHERE jam_id = ?", ids)
            await self._db.executemany("DELETE FROM jams WHERE jam_id = ?", ids)
            await self._db.commit()
        return len(ids)

    async def _write(self, statement: str, params: tuple[object, ...]) -> None:
        await write(self._db, self._lock, statement, params)

    async def _fetch(self, query: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        async with self._lock, self._db.execute(query, params) as rows:
            return [tuple(row) for row in await rows.fetchall()]


class RedisJams:
    """``jam:{id}`` (the JSON), ``jam:{id}:blobs`` (a hash), and ``jams:open`` (the set of open ids). A closed jam's
    keys expire after ``keep_seconds`` (the retention), so pruning is Redis's own."""

    def __init__(self, client: Redis, prefix: str, keep_seconds: float) -> None:
        self.client = client
        self.prefix = prefix
        self.keep_seconds = keep_seconds

    def _key(self, jam_id: str) -> str:
        return f"{self.prefix}jam:{jam_id}"

    async def save(self, jam: Jam) -> None:
        key, blobs, open_set = self._key(jam.id), self._key(jam.id) + ":blobs", self.prefix + "jams:open"
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(key, jam.model_dump_json())
            if jam.state is JamState.OPEN:
                pipe.sadd(open_set, jam.id)
                pipe.persist(key)
                pipe.persist(blobs)
            else:
                pipe.srem(open_set, jam.id)
                pipe.expire(key, int(self.keep_seconds))
                pipe.expire(blobs, int(self.keep_seconds))
            await pipe.execute()

    async def get(self, jam_id: str) -> Jam | None:
        data = await self.client.get(self._key(jam_id))
        return None if data is None else Jam.model_validate_json(data)

    async def open_jams(self) -> list[Jam]:
        ids = sorted(member.decode() if isinstance(member, bytes) else str(member)
                     for member in await self.client.smembers(self.prefix + "jams:open"))
        found = await self.client.mget([self._key(jam_id) for jam_id in ids]) if ids else []
        jams = [Jam.model_validate_json(data) for data in found if data is not None]
        return sorted(jams, key=lambda jam: jam.created_at)

    async def put_blob(self, jam_id: str, name: str, data: bytes) -> None:
        await self.client.hset(self._key(jam_id) + ":blobs", name, data)

    async def get_blob(self, jam_id: str, name: str) -> bytes | None:
        data = await self.client.hget(self._key(jam_id) + ":blobs", name)
        return None if data is None else bytes(data) if isinstance(data, bytes) else data.encode()

    async def prune(self, before: float) -> int:
        return 0  # closed jams expire by themselves
