"""A message that is edited at most once per interval, always ending on the latest text."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import discord

log = logging.getLogger(__name__)


class ThrottledEditor:
    """Coalesces updates: :meth:`set` is cheap; :meth:`run` sends the newest text at most every ``interval`` s.

    ``set`` takes the text, or a function that renders it: a busy queue sends many
    events, and the text is then rendered only when an edit is really due.
    Run :meth:`run` as a task and call :meth:`close` when no more updates will come;
    ``run`` then sends what is pending (still honouring the interval) and returns.
    """

    def __init__(
        self,
        edit: Callable[[str], Awaitable[object]],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._edit = edit
        self._interval = interval
        self._clock = clock
        self._pending: Callable[[], str] | None = None
        self._sent: str | None = None
        self._last_at = float("-inf")
        self._wake = asyncio.Event()
        self._closed = False
        self.edits = 0

    def set(self, text: str | Callable[[], str]) -> None:
        self._pending = text if callable(text) else (lambda: text)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        while not (self._closed and self._pending is None):
            await self._wake.wait()
            self._wake.clear()
            wait = self._last_at + self._interval - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)  # everything set meanwhile is coalesced into one edit
            await self._flush()

    async def _flush(self) -> None:
        if self._pending is None:
            return
        render, self._pending = self._pending, None
        text = render()
        if text == self._sent:
            return
        self._last_at = self._clock()
        try:
            await self._edit(text)
        except discord.HTTPException as exc:  # an expired token or a deleted message: the job goes on
            log.info("status edit failed (%s %s)", exc.status, exc.text)
        else:
            self._sent = text
            self.edits += 1
