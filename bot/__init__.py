"""jamgen's Discord bot: the next piece of work (see README, "Status").

It will be a client of :mod:`generation`, which it reaches only through the engine's
public API (``Engine.submit`` and job handles).
"""
