"""Calling Redis until it answers: the one back-off loop of workers and bots."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")


async def retrying(call: Callable[[], Awaitable[T]], first: float, longest: float, *,
                   stop: asyncio.Event | None = None, on_error: Callable[[RedisError], None] | None = None) -> T:
    """``call()`` until Redis answers, waiting ``first`` seconds, doubling up to ``longest``. Each failure goes to
    ``on_error`` (by default a warning); once ``stop`` is set, a failure is raised instead."""
    wait = first
    while True:
        try:
            return await call()
        except RedisError as exc:
            if stop is not None and stop.is_set():
                raise
            if on_error is None:
                log.warning("Redis is unreachable (%s): trying again in %.1f s", exc, wait)
            else:
                on_error(exc)
            await asyncio.sleep(wait)
            wait = min(wait * 2, longest)
