"""Retention: finished jobs and their kept audio are forgotten after ``JAMGEN_RETENTION_DAYS``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from bot.delivery import codes_path
from bot.store import Store
from generation.audio_in import prune_files

log = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0  # seconds


async def prune(store: Store, retention_days: float, now: float | None = None, uploads: Path | None = None) -> int:
    """Forget finished jobs older than the retention; delete their files, and prepared uploads unused as long.
    Returns how many jobs went."""
    cutoff = (time.time() if now is None else now) - retention_days * 86400
    if uploads is not None and (gone := await asyncio.to_thread(prune_files, uploads, cutoff)):
        log.info("pruned %d uploaded audio files unused for %g days", gone, retention_days)
    paths = await store.journal.prune(cutoff)
    for path in paths:
        for kept in (path, str(codes_path(Path(path)))):
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.remove, kept)
    if paths:
        log.info("pruned %d finished jobs older than %g days", len(paths), retention_days)
    if store.jams is not None and (jams := await store.jams.prune(cutoff)):
        log.info("pruned %d jams closed more than %g days ago", jams, retention_days)
    return len(paths)


async def prune_forever(store: Store, retention_days: float, every: float = PRUNE_EVERY,
                        uploads: Path | None = None) -> None:
    """Prune now and then every ``every`` seconds, until cancelled (the bot's close awaits it)."""
    while True:
        try:
            await prune(store, retention_days, uploads=uploads)
        except Exception:
            log.exception("pruning the journal failed; trying again later")
        await asyncio.sleep(every)
