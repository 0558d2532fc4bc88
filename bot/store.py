"""What the bot keeps across restarts, in SQLite (aiosqlite, WAL): guild settings, jobs, meta.

Guild settings are read on every command, so they are cached in memory and written
through; everything else is read when needed (a button press, /queue after a restart).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiosqlite
from pydantic import BaseModel, ConfigDict, Field

from generation.jobs import JobRequest, OutputFormat

SCHEMA = """
CREATE TABLE IF NOT EXISTS guild_settings (guild_id INTEGER PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    guild_id INTEGER,
    channel_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    audio_path TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_user ON jobs (user_id, created_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class GuildSettings(BaseModel):
    """A guild's choices, set with ``/jamgen settings``. ``None`` means the bot-wide default."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    allowed_channels: tuple[int, ...] = ()  # empty: every channel
    max_duration: int | None = Field(None, ge=1, le=30)
    max_jobs: int | None = Field(None, ge=1, le=50)
    rate_count: int | None = Field(None, ge=1, le=1000)
    rate_window: float | None = Field(None, gt=0, le=86400)
    default_format: OutputFormat | None = None
    exempt_role_id: int | None = None


class JobRecord(BaseModel):
    """A job as the bot remembers it: enough to answer a button press after a restart."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    guild_id: int | None
    channel_id: int
    user_id: int
    request: JobRequest
    state: str
    audio_path: str | None = None
    created_at: float


class Store:
    """One SQLite file. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._guilds: dict[int, GuildSettings] = {}

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.executescript(SCHEMA)
        await self._db.commit()
        async with self._db.execute("SELECT guild_id, data FROM guild_settings") as rows:
            async for guild_id, data in rows:
                self._guilds[guild_id] = GuildSettings.model_validate_json(data)

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
        await self.db.execute(
            "INSERT INTO guild_settings (guild_id, data) VALUES (?, ?) "
            "ON CONFLICT(guild_id) DO UPDATE SET data = excluded.data",
            (guild_id, settings.model_dump_json()),
        )
        await self.db.commit()
        self._guilds[guild_id] = settings
        return settings

    # -- jobs -------------------------------------------------------------------------------
    async def add_job(self, record: JobRecord) -> None:
        await self.db.execute(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.job_id, record.guild_id, record.channel_id, record.user_id,
                record.request.model_dump_json(), record.state, record.audio_path, record.created_at, time.time(),
            ),
        )
        await self.db.commit()

    async def set_job_state(self, job_id: str, state: str, audio_path: str | None = None) -> None:
        await self.db.execute(
            "UPDATE jobs SET state = ?, audio_path = COALESCE(?, audio_path), updated_at = ? WHERE job_id = ?",
            (state, audio_path, time.time(), job_id),
        )
        await self.db.commit()

    async def job(self, job_id: str) -> JobRecord | None:
        query = "SELECT job_id, guild_id, channel_id, user_id, request, state, audio_path, created_at FROM jobs"
        async with self.db.execute(f"{query} WHERE job_id = ?", (job_id,)) as rows:
            row = await rows.fetchone()
        if row is None:
            return None
        keys = ("job_id", "guild_id", "channel_id", "user_id", "request", "state", "audio_path", "created_at")
        data = dict(zip(keys, row, strict=True))
        data["request"] = JobRequest.model_validate(json.loads(data["request"]), context={"stored": True})
        return JobRecord.model_validate(data)

    # -- meta -------------------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        async with self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as rows:
            row = await rows.fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        await self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
        await self.db.commit()
