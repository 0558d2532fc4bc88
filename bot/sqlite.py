"""One write to the bot's SQLite file: a statement committed on its own, under the connection's lock (statements
of one connection must never interleave)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiosqlite


async def write(db: aiosqlite.Connection, lock: asyncio.Lock, statement: str, params: tuple[Any, ...]) -> None:
    async with lock:
        try:
            await db.execute(statement, params)
        except BaseException:
            await db.rollback()
            raise
        await db.commit()
