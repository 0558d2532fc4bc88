"""Slash-command option ranges that depend on the deployment (``JAMGEN_MAX_DURATION``).

discord.py's ``app_commands.Range`` is fixed when the module is imported; the cap is known only
once the bot is built. A command is declared with the widest range it may ever have, and each
cog narrows its own copy of the command (discord.py copies a cog's commands per instance) before
the tree is synced, so what Discord shows follows the cap.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from discord import app_commands


def cap_option(command: app_commands.Command[Any, ..., Any], name: str, max_value: int) -> None:
    """Lower the ``max_value`` of ``command``'s option ``name`` (this copy of the command only)."""
    params = command._params
    if name not in params:
        raise KeyError(f"/{command.qualified_name} has no option {name!r}")
    params[name] = dataclasses.replace(params[name], max_value=max_value)  # shared by copies: not changed in place
