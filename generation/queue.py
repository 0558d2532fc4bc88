"""Where jobs wait, and how a batch is taken from them.

:class:`JobQueue` is the seam the bot's fair scheduler (and a Redis-backed one)
plugs into. :class:`FifoQueue` is the plain first-come version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

Item = TypeVar("Item", bound="Batchable")


class Batchable(Protocol):
    @property
    def job_id(self) -> str: ...

    @property
    def batch_key(self) -> Hashable: ...


class JobQueue(Protocol[Item]):
    def put(self, item: Item) -> None: ...

    def remove(self, job_id: str) -> bool: ...

    def positions(self) -> dict[str, int]:
        """job id -> 1-based position in the order jobs will start."""

    async def take_batch(self, max_size: int, window: float) -> list[Item]:
        """Wait for a job, then take it and up to ``max_size - 1`` compatible ones.

        ``window`` seconds are given to late companions once the first job is there.
        Returns ``[]`` once the queue is closed.
        """

    def close(self) -> list[Item]:
        """Stop; wake the taker; return what was still waiting."""

    def __len__(self) -> int: ...


@dataclass
class FifoQueue(Generic[Item]):
    """First come, first served; a batch is the head job plus the next compatible ones."""

    def __post_init__(self) -> None:
        self._items: list[Item] = []
        self._changed = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Item) -> None:
        if self._closed:
            raise RuntimeError("queue is closed")
        self._items.append(item)
        self._changed.set()

    def remove(self, job_id: str) -> bool:
        for index, item in enumerate(self._items):
            if item.job_id == job_id:
                del self._items[index]
                return True
        return False

    def positions(self) -> dict[str, int]:
        return {item.job_id: index for index, item in enumerate(self._items, start=1)}

    def _take(self, max_size: int) -> list[Item]:
        key = self._items[0].batch_key
        batch = [item for item in self._items if item.batch_key == key][:max_size]
        taken = {id(item) for item in batch}
        self._items = [item for item in self._items if id(item) not in taken]
        return batch

    async def _wait_for_items(self) -> None:
        while not self._items and not self._closed:
            self._changed.clear()
            await self._changed.wait()

    async def take_batch(self, max_size: int, window: float = 0.0) -> list[Item]:
        while True:
            await self._wait_for_items()
            if window > 0 and not self._closed and len(self._items) < max_size:
                await asyncio.sleep(window)
            if self._closed:
                return []
            if self._items:  # they may all have been cancelled during the window
                return self._take(max_size)

    def close(self) -> list[Item]:
        self._closed = True
        left, self._items = self._items, []
        self._changed.set()
        return left
