"""The job journal: every accepted job and each step of its life, in SQLite, so nothing is lost.

A job is written here before its user reads "queued". Its states::

    queued -> running -> encoding -> delivering -> delivered
                                   \\-> failed(reason) | cancelled

Each transition is a row in ``job_events`` with its time. After a crash or restart,
:meth:`Journal.unfinished` gives back every job that was not done, in submission order,
with what is needed to resume it (its request, its interaction token, its status message).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from enum import Enum
from typing import Any

import aiosqlite
from pydantic import BaseModel, ConfigDict

from generation.jobs import JobRequest


class State(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    ENCODING = "encoding"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def done(self) -> bool:
        return self in (State.DELIVERED, State.FAILED, State.CANCELLED)


UNFINISHED = tuple(state.value for state in State if not state.done)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    ticket_id TEXT NOT NULL,
    guild_id INTEGER,
    channel_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    request TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    audio_path TEXT,
    application_id INTEGER,
    token TEXT,
    interaction_at REAL,
    status_message_id INTEGER,
    message_id INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS job_events_by_job ON job_events (job_id, at);
"""
# Columns added after the first release: an existing file gets them on open (:func:`migrate`), a new one too.
ADDED_COLUMNS = {
    "take": "INTEGER",  # the job's number among its ticket's takes (/generate variants); NULL for other jobs
    "favourite": "INTEGER NOT NULL DEFAULT 0",  # 1: the take its requester marked as the favourite
    "jam_id": "TEXT",  # a jam's section (bot/jam/): posted in the jam's thread
}

COLUMNS = (
    "job_id", "ticket_id", "guild_id", "channel_id", "user_id", "request", "title", "state", "reason", "attempts",
    "audio_path", "application_id", "token", "interaction_at", "status_message_id", "message_id", "created_at",
    *ADDED_COLUMNS,
)


class JobRecord(BaseModel):
    """One job as the journal keeps it."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    ticket_id: str
    guild_id: int | None
    channel_id: int
    user_id: int
    request: JobRequest
    title: str = ""
    state: State = State.QUEUED
    reason: str | None = None
    attempts: int = 0
    audio_path: str | None = None
    application_id: int | None = None  # with the token: the interaction's webhook, for edits and follow-ups
    token: str | None = None
    interaction_at: float | None = None  # epoch seconds; the token lives 15 minutes from here
    status_message_id: int | None = None
    message_id: int | None = None  # the post that delivered it
    jam_id: str | None = None  # a jam's section (:mod:`bot.jam`): posted in the jam's thread
    created_at: float
    take: int | None = None  # its number among the ticket's takes (bot/takes.py); None: not a take
    favourite: bool = False


async def migrate(db: aiosqlite.Connection) -> None:
    """Add the columns an older journal file lacks (SQLite keeps existing rows; new columns get their default)."""
    async with db.execute("PRAGMA table_info(jobs)") as rows:
        present = {str(row[1]) for row in await rows.fetchall()}
    for name, declaration in ADDED_COLUMNS.items():
        if name not in present:
            await db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")


class Journal:
    """Every method is one transaction, and they never interleave on the connection.

    (CPython's sqlite3 module can fail with "bad parameter or other API misuse" when
    statements of one connection are interleaved; the lock rules that out.)
    """

    def __init__(self, db: aiosqlite.Connection, lock: asyncio.Lock) -> None:
        self._db = db
        self._lock = lock

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            try:
                yield self._db
            except BaseException:
                await self._db.rollback()
                raise
            await self._db.commit()

    async def add(self, records: Iterable[JobRecord]) -> None:
        """Record new jobs, all or none."""
        now = time.time()
        rows = [self._row(record) for record in records]
        marks = ", ".join("?" * (len(COLUMNS) + 1))
        async with self._transaction() as db:
            await db.executemany(f"INSERT INTO jobs ({', '.join(COLUMNS)}, updated_at) VALUES ({marks})",
                                 [(*row, now) for row in rows])
            await db.executemany(
                "INSERT INTO job_events VALUES (?, ?, ?, NULL)", [(row[0], State.QUEUED.value, now) for row in rows]
            )

    async def move(self, job_id: str, state: State, detail: str | None = None, **fields: Any) -> None:
        """Record a transition (and any of ``audio_path``, ``message_id``, ``reason``, ``attempts``)."""
        now = time.time()
        changes = {"state": state.value, "updated_at": now, **fields}
        assignments = ", ".join(f"{name} = ?" for name in changes)
        async with self._transaction() as db:
            await db.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*changes.values(), job_id))
            await db.execute("INSERT INTO job_events VALUES (?, ?, ?, ?)", (job_id, state.value, now, detail))

    async def set_status_message(self, ticket_id: str, message_id: int) -> None:
        async with self._transaction() as db:
            await db.execute("UPDATE jobs SET status_message_id = ? WHERE ticket_id = ?", (message_id, ticket_id))

    async def set_favourite(self, ticket_id: str, job_id: str) -> None:
        """Mark ``job_id`` as its ticket's favourite take, and none of the other takes."""
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET favourite = (job_id = ?) WHERE ticket_id = ? AND take IS NOT NULL", (job_id, ticket_id)
            )

    async def takes_of(self, ticket_id: str) -> list[JobRecord]:
        """The ticket's takes, by number."""
        return await self._select("WHERE ticket_id = ? AND take IS NOT NULL ORDER BY take", (ticket_id,))

    async def count_attempt(self, job_id: str) -> int:
        async with self._transaction() as db:
            await db.execute("UPDATE jobs SET attempts = attempts + 1 WHERE job_id = ?", (job_id,))
            async with db.execute("SELECT attempts FROM jobs WHERE job_id = ?", (job_id,)) as rows:
                row = await rows.fetchone()
        return int(row[0]) if row else 0

    async def get(self, job_id: str) -> JobRecord | None:
        records = await self._select("WHERE job_id = ?", (job_id,))
        return records[0] if records else None

    async def unfinished(self) -> list[JobRecord]:
        """Every job not yet delivered, failed or cancelled, oldest first."""
        marks = ", ".join("?" * len(UNFINISHED))
        return await self._select(f"WHERE state IN ({marks}) ORDER BY seq", UNFINISHED)

    async def events(self, job_id: str) -> list[tuple[str, float, str | None]]:
        query = "SELECT state, at, detail FROM job_events WHERE job_id = ? ORDER BY at, rowid"
        return [(str(state), float(at), detail) for state, at, detail in await self._fetch(query, (job_id,))]

    async def counts(self) -> dict[str, int]:
        return {str(state): int(count) for state, count in await self._fetch(
            "SELECT state, COUNT(*) FROM jobs GROUP BY state", ()
        )}

    async def prune(self, before: float) -> list[str]:
        """Forget finished jobs last updated before ``before`` (epoch s); return their audio files to delete."""
        done = tuple(state.value for state in State if state.done)
        where = f"state IN ({', '.join('?' * len(done))}) AND updated_at < ?"
        async with self._transaction() as db:
            async with db.execute(f"SELECT job_id, audio_path FROM jobs WHERE {where}", (*done, before)) as rows:
                found = [(str(job_id), path) for job_id, path in await rows.fetchall()]
            ids = [(job_id,) for job_id, _ in found]
            await db.executemany("DELETE FROM job_events WHERE job_id = ?", ids)
            await db.executemany("DELETE FROM jobs WHERE job_id = ?", ids)
        return [str(path) for _, path in found if path]

    async def _fetch(self, query: str, params: tuple[Any, ...]) -> list[Any]:
        async with self._lock, self._db.execute(query, params) as rows:
            return list(await rows.fetchall())

    async def _select(self, where: str, params: Iterable[Any]) -> list[JobRecord]:
        rows = await self._fetch(f"SELECT {', '.join(COLUMNS)} FROM jobs {where}", tuple(params))
        return [self._record(row) for row in rows]

    @staticmethod
    def _row(record: JobRecord) -> tuple[Any, ...]:
        data = record.model_dump(mode="json")
        data["request"] = record.request.model_dump_json()
        return tuple(data[name] for name in COLUMNS)

    @staticmethod
    def _record(row: Iterable[Any]) -> JobRecord:
        data = dict(zip(COLUMNS, row, strict=True))
        # a stored request may outlive the clip it extends: skip the file check
        data["request"] = JobRequest.model_validate(json.loads(data["request"]), context={"stored": True})
        return JobRecord.model_validate(data)
