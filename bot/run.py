"""Run the bot until SIGINT or SIGTERM, then shut down cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import warnings
from pathlib import Path

import discord

from bot.errors import ConfigError
from bot.preflight import DEFAULT_PROBES, Probes, preflight
from bot.settings import check_deployment, load_redis_settings, load_settings
from generation.metrics import MetricsUnavailable, serve_metrics

log = logging.getLogger("jamgen")


async def serve(env_file: Path | None = Path(".env"), probes: Probes = DEFAULT_PROBES) -> int:
    settings, engine_settings = load_settings(env_file)
    redis = load_redis_settings(env_file)
    check_deployment(settings, redis)
    preflight(settings.default_format, engine_settings.data_dir, probes)
    # After the preflight: bot.app needs PyAV, whose absence the preflight explains. It imports torch-free
    # code only; the model loads in the background.
    from bot.app import create_bot

    bot = create_bot(settings, engine_settings, redis=redis)
    try:
        metrics = serve_metrics(bot.metrics, engine_settings.metrics_port, engine_settings.metrics_host)
    except MetricsUnavailable as exc:
        raise ConfigError(str(exc)) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with bot:
            runner = asyncio.create_task(bot.start(settings.token.get_secret_value()), name="discord-client")
            stopper = asyncio.create_task(stop.wait(), name="stop-signal")
            await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                log.info("signal received: stopping")
            await bot.close()
            stopper.cancel()
            results = await asyncio.gather(runner, stopper, return_exceptions=True)
    finally:
        if metrics is not None:
            metrics.close()
    error = results[0]
    if isinstance(error, discord.LoginFailure):
        raise ConfigError(f"Discord refused the token ({error}). Check DISCORD_TOKEN in .env.")
    if isinstance(error, BaseException) and not isinstance(error, asyncio.CancelledError):
        raise error
    return 0


def main(env_file: Path | None = Path(".env"), verbose: bool = False, probes: Probes = DEFAULT_PROBES) -> int:
    """Run the bot; a configuration or set-up problem is printed with its fix (no traceback), exit code 2."""
    warnings.filterwarnings("ignore", message=".*weight_norm is deprecated.*")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("discord").setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        return asyncio.run(serve(env_file, probes))
    except ConfigError as exc:
        sys.stderr.write(f"jamgen: {exc}\n")
        return 2
    except discord.PrivilegedIntentsRequired:
        sys.stderr.write("jamgen: the bot asked for an intent Discord has not enabled for it.\n")
        return 2
