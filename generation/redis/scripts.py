"""The Lua scripts (``lua/*.lua``), registered with redis-py's ``register_script``.

Each script is ``lua/common.lua`` (key names and shared steps) followed by the script's own
file. Every call passes the same three leading arguments (prefix, how long ended jobs are kept,
the events stream's length cap); a script's own arguments follow.
"""

from __future__ import annotations

import math
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

NAMES = ("admit", "take", "positions", "remove", "heartbeat", "reclaim", "complete", "fail", "release", "progress")

Arg = str | int | float | bytes


@cache
def source(name: str) -> str:
    """The full text of script ``name``: the common prelude, then the script."""
    if name not in NAMES:
        raise KeyError(name)
    folder = resources.files(__package__).joinpath("lua")
    return folder.joinpath("common.lua").read_text() + "\n" + folder.joinpath(f"{name}.lua").read_text()


class Scripts:
    """The scripts bound to one client and one key prefix."""

    def __init__(self, client: Redis, prefix: str, keep_seconds: float, events_maxlen: int) -> None:
        self._scripts: dict[str, AsyncScript] = {name: client.register_script(source(name)) for name in NAMES}
        self._leading: list[Arg] = [prefix, max(1, math.ceil(keep_seconds * 1000)), events_maxlen]

    async def call(self, name: str, *args: Arg) -> Any:
        """Run script ``name`` with its own ``args`` (after the common three)."""
        return await self._scripts[name](keys=[], args=[*self._leading, *args])
