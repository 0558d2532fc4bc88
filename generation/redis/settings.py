"""Settings of the scaled-out mode (``REDIS_URL`` set), from the environment and ``.env``."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from generation.redis.keys import DEFAULT_PREFIX


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
    keep_seconds: float = Field(
        3600.0, gt=0, validation_alias=AliasChoices("JAMGEN_RESULT_TTL", "keep_seconds"),
        description="how long an ended job's record and file stay in Redis",
    )

    @model_validator(mode="after")
    def _reclaim_after_several_heartbeats(self) -> RedisSettings:
        if self.reclaim_after < 3 * self.heartbeat:
            raise ValueError("JAMGEN_RECLAIM_AFTER must be at least three heartbeats (JAMGEN_HEARTBEAT)")
        return self

    @property
    def enabled(self) -> bool:
        return self.url is not None
