"""What every bot process must agree on, kept in Redis when ``REDIS_URL`` is set: guild settings and
the command-sync hash.

Guild settings are read on every command, so each process caches them. A change is written to the
``guilds`` hash and announced on the ``guilds`` channel, and every process reloads that guild; as
pub/sub drops what is sent while a process reconnects, each also reloads all of them every
``refresh`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.store import GuildSettings
from generation.redis.keys import Keys

log = logging.getLogger(__name__)


class SharedState:
    def __init__(self, client: Redis, keys: Keys, refresh: float = 30.0) -> None:
        self.client = client
        self.guilds_key = keys.prefix + "guilds"
        self.meta_key = keys.prefix + "meta"
        self.channel = keys.prefix + "guilds"
        self.refresh = refresh

    async def load(self) -> dict[int, GuildSettings]:
        raw = await self.client.hgetall(self.guilds_key)
        return {int(guild_id): GuildSettings.model_validate_json(data) for guild_id, data in raw.items()}

    async def save(self, guild_id: int, settings: GuildSettings) -> None:
        await self.client.hset(self.guilds_key, str(guild_id), settings.model_dump_json())
        await self.client.publish(self.channel, str(guild_id))

    async def get_meta(self, key: str) -> str | None:
        value = await self.client.hget(self.meta_key, key)
        return value.decode() if isinstance(value, bytes) else value

    async def set_meta(self, key: str, value: str) -> None:
        await self.client.hset(self.meta_key, key, value)

    async def follow(self, apply: Callable[[dict[int, GuildSettings]], None]) -> None:
        """Call ``apply`` with every guild's settings on each change announced and every ``refresh`` s."""
        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    apply(await self.load())
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.refresh)
                        if message is None or message.get("type") == "message":
                            apply(await self.load())
            except RedisError as exc:
                log.warning("guild settings: Redis is unreachable (%s); using the ones last read", exc)
                await asyncio.sleep(min(self.refresh, 5.0))
