"""Settings of the scaled-out mode (``REDIS_URL`` set), from the environment and ``.env``."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from generation.redis.keys import DEFAULT_PREFIX


@dataclass(frozen=True)
class WorkerTimings:
    """A worker's timings, in seconds. ``reclaim_after`` must be several heartbeats: it is how long a
    job may go without one before another worker takes it back."""

    heartbeat: float = 5.0
    reclaim_after: float = 30.0
    reap_every: float = 5.0
    poll: float = 1.0  # the longest wait between takes while rows are free (should a wake-up be lost)
    retry: float = 0.5  # the first wait after a Redis error; doubles up to ``heartbeat``
    grace: float = 120.0  # at shutdown, how long running jobs may finish before they are given back

    def __post_init__(self) -> None:
        if self.reclaim_after < 3 * self.heartbeat:
            raise ValueError("JAMGEN_RECLAIM_AFTER must be at least three heartbeats (JAMGEN_HEARTBEAT)")


class RedisSettings(BaseSettings):
    """Where the shared queue lives, and the timings of the workers' leases (seconds)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True)

    url: SecretStr | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "url"),
        description="redis://[:password@]host:port/db; unset: the embedded mode (one process, no Redis)",
    )
    prefix: str = Field(DEFAULT_PREFIX, min_length=1, validation_alias=AliasChoices("JAMGEN_REDIS_PREFIX", "prefix"))
    heartbeat: float = Field(5.0, gt=0, validation_alias=AliasChoices("JAMGEN_HEARTBEAT", "heartbeat"))
    reclaim_after: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("JAMGEN_RECLAIM_AFTER", "reclaim_after"),
        description="a job held this long without a heartbeat goes back to the queue (its worker died)",
    )
    bot_name: str | None = Field(
        None, min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", validation_alias=AliasChoices("JAMGEN_BOT_NAME", "bot_name"),
        description="this bot process's name, stable across its restarts (default: the host's name); "
        "each bot process sharing one Redis needs its own",
    )
    keep_seconds: float = Field(
        3600.0, gt=0, validation_alias=AliasChoices("JAMGEN_RESULT_TTL", "keep_seconds"),
        description="how long an ended job's record and file stay in Redis",
    )

    @model_validator(mode="after")
    def _timings_hold(self) -> RedisSettings:
        self.timings()  # raises when the timings cannot work together
        return self

    def timings(self) -> WorkerTimings:
        """A worker's timings from these settings; the reaper runs once a heartbeat."""
        return WorkerTimings(heartbeat=self.heartbeat, reclaim_after=self.reclaim_after, reap_every=self.heartbeat)

    @property
    def enabled(self) -> bool:
        return self.url is not None
