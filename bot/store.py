"""What the bot keeps across restarts, in one SQLite file (aiosqlite, WAL): guild settings,
the job journal (:mod:`bot.journal`) and a little metadata.

Guild settings are read on every command, so they are cached in memory and written
through; the journal is read when needed (a button press, a restart).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from bot.journal import SCHEMA as JOURNAL_SCHEMA
from bot.journal import Journal, migrate
from generation.jobs import OutputFormat
from generation.settings import MAX_DURATION_CAP

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS guild_settings (guild_id INTEGER PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class GuildSettings(BaseModel):
    """A guild's choices, set with ``/jamgen settings``. ``None`` means the bot-wide default."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    allowed_channels: tuple[int, ...] = ()  # empty: every channel
    max_duration: int | None = Field(None, ge=1, le=int(MAX_DURATION_CAP))  # and at most the deployment's cap
    max_jobs: int | None = Field(None, ge=1, le=50)
    rate_count: int | None = Field(None, ge=1, le=1000)
    rate_window: float | None = Field(None, gt=0, le=86400)
    default_format: OutputFormat | None = None
    exempt_role_id: int | None = None


class SharedSettings(Protocol):
    """Where guild settings and metadata live when several bot processes share them (:mod:`bot.shared`)."""

    async def load(self) -> dict[int, GuildSettings]: ...
    async def save(self, guild_id: int, settings: GuildSettings) -> None: ...
    async def get_meta(self, key: str) -> str | None: ...
    async def set_meta(self, key: str, value: str) -> None: ...


class Store:
    """One SQLite file. Open with :meth:`open`, close with :meth:`close`.

    With ``shared`` (Redis), guild settings and metadata are read from and written to it first; the
    SQLite copy is what the bot uses while it is unreachable at start-up.
    """

    def __init__(self, path: Path, shared: SharedSettings | None = None) -> None:
        self.path = path
        self.shared = shared
        self._db: aiosqlite.Connection | None = None
        self._guilds: dict[int, GuildSettings] = {}
        self.journal: Journal
        self._lock = asyncio.Lock()  # one statement sequence at a time on the connection

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        await asyncio.to_thread(os.chmod, self.path, 0o600)  # it holds interaction tokens (15 minutes' worth)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        await self._db.executescript(SCHEMA + JOURNAL_SCHEMA)
        await migrate(self._db)
        await self._db.commit()
        self.journal = Journal(self._db, self._lock)
        async with self._db.execute("SELECT guild_id, data FROM guild_settings") as rows:
            async for guild_id, data in rows:
                self._guilds[guild_id] = GuildSettings.model_validate_json(data)
        if self.shared is not None:
            try:
                self.apply_shared(await self.shared.load())
            except RedisError as exc:
                log.warning("guild settings: Redis is unreachable (%s); using this host's copy for now", exc)

    def apply_shared(self, guilds: dict[int, GuildSettings]) -> None:
        """Take the shared guild settings (another process may have changed them)."""
        self._guilds.update(guilds)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    # -- guild settings ---------------------------------------------------------------------
    def guild(self, guild_id: int | None) -> GuildSettings:
        return self._guilds.get(guild_id, GuildSettings()) if guild_id is not None else GuildSettings()

    async def update_guild(self, guild_id: int, **changes: Any) -> GuildSettings:
        settings = GuildSettings.model_validate({**self.guild(guild_id).model_dump(), **changes})
        if self.shared is not None:
            await self.shared.save(guild_id, settings)
        await self._write(
            "INSERT INTO guild_settings (guild_id, data) VALUES (?, ?) "
            "ON CONFLICT(guild_id) DO UPDATE SET data = excluded.data",
            (guild_id, settings.model_dump_json()),
        )
        self._guilds[guild_id] = settings
        return settings

    # -- meta -------------------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        if self.shared is not None:
            return await self.shared.get_meta(key)
        async with self._lock, self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as rows:
            row = await rows.fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        if self.shared is not None:
            await self.shared.set_meta(key, value)
            return
        await self._write(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def _write(self, statement: str, params: tuple[Any, ...]) -> None:
        async with self._lock:
            try:
                await self.db.execute(statement, params)
            except BaseException:
                await self.db.rollback()
                raise
            await self.db.commit()
