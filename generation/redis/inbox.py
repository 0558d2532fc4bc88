""":class:`Inbox`: a bot process's own events stream, ``events:{name}``.

A bot admits jobs with ``notify`` set to its stream, so the ends of its jobs (finished, failed,
cancelled) come to it and to no other bot. It reads them in the consumer group ``bots`` and
acknowledges each only once the result is posted: an entry it read but did not acknowledge
(the bot stopped, or crashed mid-upload) is read again when a bot starts under the same name,
before anything new.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from generation.redis.keys import Keys
from generation.redis.records import Event, text

log = logging.getLogger(__name__)

GROUP = "bots"
BATCH = 100


class Inbox:
    def __init__(self, client: Redis, keys: Keys, name: str) -> None:
        self.client = client
        self.name = name
        self.stream = keys.notify(name)
        self._backlog = True  # what this name read before and did not acknowledge, first
        self._after = "0"

    async def setup(self) -> None:
        """Create the stream and its group at ``0`` (so it sees every entry); idempotent."""
        try:
            await self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, block: float) -> list[Event]:
        """The backlog (entries read before, not acknowledged) while there is one, then new entries,
        waiting up to ``block`` seconds for some."""
        if self._backlog:
            entries = await self._read(self._after, None)
            if entries:
                self._after = text(entries[-1][0])
                return await self._decode(entries)
            self._backlog = False
        return await self._decode(await self._read(">", max(1, round(block * 1000))))

    async def ack(self, entry: str) -> None:
        """The entry's job is dealt with (posted, or its failure told): it is not read again."""
        await self.client.xack(self.stream, GROUP, entry)
        await self.client.xdel(self.stream, entry)

    async def _read(self, after: str, block_ms: int | None) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        reply: Any = await self.client.xreadgroup(GROUP, self.name, {self.stream: after}, count=BATCH, block=block_ms)
        return list(reply[0][1]) if reply else []

    async def _decode(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> list[Event]:
        events = []
        for entry, fields in entries:
            if not fields:  # deleted after it was read (the stream is trimmed): nothing to deliver
                await self.ack(text(entry))
                continue
            events.append(Event.decode(entry, fields))
        return events
