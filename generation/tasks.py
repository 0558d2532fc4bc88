"""Stopping background tasks for good."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], every: float = 0.1) -> None:
    """Cancel ``tasks`` and wait for them to end, cancelling again those that live on: redis-py (8.1) can
    lose a cancellation that lands while a command is in flight, and the task's loop goes on."""
    tasks = list(tasks)
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
    await asyncio.gather(*tasks, return_exceptions=True)  # all ended: collects their exceptions
