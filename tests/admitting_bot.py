"""``python -m tests.admitting_bot URL MODEL KEY OWNER COUNT``: another bot process's admissions, alone.

It admits COUNT requests of OWNER under limits KEY through the same :class:`RemoteEngine` path a bot on
Redis takes (one charge per request, the bot's default limits), with its own process and its own Redis
client, then exits: 0 when all were admitted, 3 at the first refusal (its words on stderr).
"""

from __future__ import annotations

import asyncio
import sys

from generation.admission import RateLimited, UserLimits
from generation.jobs import JobRequest
from generation.redis import RedisJobs
from generation.redis.remote import RemoteEngine
from generation.settings import EngineSettings

LIMITS = UserLimits(max_active=2, rate_count=5, rate_window=600.0, queue_cap=100)  # BotSettings' defaults


async def admit(url: str, model: str, key: str, owner: str, count: int) -> int:
    jobs = RedisJobs.from_url(url)
    engine = RemoteEngine(EngineSettings(model=model), jobs, name="bot-b", models=[model])  # type: ignore[call-arg]
    request = JobRequest.create(prompt="from another bot process", model=model, duration=1.0, owner=owner)
    try:
        for _ in range(count):
            await engine.admit([request], limits=LIMITS, key=key, exempt=False, charge=1)
    except RateLimited as refusal:
        sys.stderr.write(f"{refusal}\n")
        return 3
    finally:
        await jobs.aclose()
    return 0


if __name__ == "__main__":
    url, model, key, owner, count = sys.argv[1:6]
    sys.exit(asyncio.run(admit(url, model, key, owner, int(count))))
