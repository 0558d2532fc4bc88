"""``jamgen stats``: what the job journal holds, by state, and the audio kept on disk.

With ``REDIS_URL`` set, first the live workers and the waiting jobs (:mod:`jamgen.stats_redis`);
the journal follows where this host has one (a worker host has none).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bot.delivery import CODES_SUFFIX
from bot.journal import State
from bot.store import Store
from generation.redis.keys import DEFAULT_PREFIX


async def collect(data_dir: Path) -> tuple[dict[str, int], int, int]:
    """Counts by state, kept audio files and their bytes."""
    store = Store(data_dir / "jamgen.sqlite3")
    await store.open()
    try:
        counts = await store.journal.counts()
    finally:
        await store.close()
    files = [path for path in (data_dir / "audio").glob("*") if path.is_file()]
    tracks = [path for path in files if not path.name.endswith(CODES_SUFFIX)]  # each track's codes lie beside it
    return counts, len(tracks), sum(path.stat().st_size for path in files)


def run_stats(data_dir: Path, redis_url: str | None = None, prefix: str = DEFAULT_PREFIX) -> int:
    """Print the stats; with ``redis_url``, the workers and the queue first, and the journal only if there is one."""
    journal = data_dir / "jamgen.sqlite3"
    if redis_url is not None:
        from jamgen.stats_redis import run_redis_stats

        run_redis_stats(redis_url, prefix)
        if not journal.exists():
            return 0
    if not journal.exists():
        sys.stderr.write(f"jamgen: no journal in {data_dir}/ yet (the bot creates it when it first starts)\n")
        return 2
    counts, files, size = asyncio.run(collect(data_dir))
    lines = [f"jobs in {data_dir / 'jamgen.sqlite3'}:"]
    lines += [f"  {state.value:<11}{counts.get(state.value, 0):>8}" for state in State]
    lines.append(f"  {'total':<11}{sum(counts.values()):>8}")
    lines.append(f"audio kept: {files} files, {size / 1024 / 1024:.1f} MiB with their codes, in {data_dir / 'audio'}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
