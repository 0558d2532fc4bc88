"""The bot: start-up (setup_hook), command sync, the error boundary and a clean shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import discord
import yarl
from discord import app_commands
from discord.ext import commands
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.errors import report
from bot.exts import EXTENSIONS
from bot.housekeeping import prune_forever
from bot.monitoring import keep_gauges
from bot.pipeline import Pipeline
from bot.recovery import recover
from bot.settings import BotSettings
from bot.shared import SharedState
from bot.store import Store
from bot.ui.buttons import result_view
from bot.uploads import uploads_dir
from generation.errors import ModelLoadError
from generation.metrics import Metrics
from generation.models import resolve_model_id
from generation.redis import RedisJobs
from generation.redis.remote import RemoteEngine
from generation.redis.settings import RedisSettings
from generation.settings import EngineSettings
from generation.tasks import cancel_and_wait
from generation.worker import BackendFactory, Engine

if TYPE_CHECKING:
    from bot.jam.service import JamService

log = logging.getLogger(__name__)

COMMANDS_HASH = "commands_hash"


def point_discord_at(api_base_url: str, gateway_url: str) -> None:
    """discord.py reads these class attributes on every request / connect."""
    discord.http.Route.BASE = api_base_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class JamBot(commands.Bot):
    """The bot on one gateway connection (unsharded); :func:`create_bot` makes a :class:`ShardedJamBot` when
    ``JAMGEN_SHARD_COUNT`` is set."""

    def __init__(
        self,
        settings: BotSettings,
        engine_settings: EngineSettings,
        *,
        backend_factory: BackendFactory | None = None,
        redis: RedisSettings | None = None,
        **options: Any,
    ) -> None:
        """``redis`` with a URL: jobs go to Redis, for ``jamgen worker`` hosts; else an in-process engine."""
        if settings.sharded != isinstance(self, commands.AutoShardedBot):
            raise TypeError("JAMGEN_SHARD_COUNT needs a ShardedJamBot, and only it: make the bot with create_bot()")
        if settings.sharded:
            options.update(shard_ids=settings.shard_ids, shard_count=settings.shard_count)
        if settings.application_id is not None:  # else discord.py asks Discord at login
            options["application_id"] = settings.application_id
        intents = discord.Intents.none()
        intents.guilds = True  # channels and roles, for permission checks and fallbacks
        super().__init__(
            command_prefix=commands.when_mentioned, intents=intents, help_command=None,
            allowed_mentions=discord.AllowedMentions.none(), **options,
        )
        point_discord_at(settings.api_base_url, settings.gateway_url)
        self.settings = settings
        self.models = list(dict.fromkeys(resolve_model_id(name) for name in settings.models or [engine_settings.model]))
        self.engine: Engine | RemoteEngine
        self.shared: SharedState | None = None
        if redis is not None and redis.url is not None:
            name = redis.bot_name or settings.process_name(socket.gethostname())
            self.engine = _remote(engine_settings, redis, self.models, name)
            self.shared = SharedState(self.engine.redis.client, self.engine.redis.keys)
        else:
            self.engine = Engine(engine_settings, backend_factory=backend_factory)
        self.store = Store(engine_settings.data_dir / "jamgen.sqlite3", shared=self.shared)
        self.metrics = Metrics()
        self.pipeline = Pipeline(self, self.engine, self.store, settings, result_view, metrics=self.metrics)
        self.jams: JamService | None = None  # the jam cog's, once loaded
        self.after_recovery: list[Callable[[], Awaitable[None]]] = []  # run once the journal's jobs are resumed
        self._warm_up: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []  # run until close() cancels them
        self._closing = False

    async def setup_hook(self) -> None:
        await self.store.open()
        await self.engine.start()
        self.tree.on_error = self.on_app_command_error  # type: ignore[method-assign]
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.sync_commands()
        await recover(self.pipeline)  # before the gateway connects: resumed jobs keep their place
        for hook in self.after_recovery:
            await hook()
        if isinstance(self.engine, Engine):  # on Redis, the workers load the models
            self._warm_up = asyncio.create_task(self._load_model(), name="jamgen-warm-up")
        self._background.append(asyncio.create_task(
            prune_forever(self.store, self.settings.retention_days,
                          uploads=uploads_dir(self.engine.settings.data_dir)), name="jamgen-housekeeping"
        ))
        self._background.append(asyncio.create_task(keep_gauges(self.engine, self.metrics), name="jamgen-gauges"))
        if self.shared is not None:
            self._background.append(asyncio.create_task(
                self.shared.follow(self.store.apply_shared), name="jamgen-guild-settings"
            ))

    def keep_running(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` until the bot closes (close() cancels and awaits it)."""
        self._background.append(asyncio.create_task(work, name=name))

    async def _load_model(self) -> None:
        """Load the model in the background: the bot answers (and queues) while it loads."""
        try:
            await self.engine.warm_up(self.models[0])
            log.info("model %s ready", self.models[0])
        except ModelLoadError as exc:
            log.error("%s Jobs will fail until this is fixed.", exc)

    async def sync_commands(self) -> None:
        """To the test guild when one is set (instant); globally only when the command tree changed.

        Sharded, only the process that runs shard 0 syncs (every process has the same tree).
        """
        if not self.settings.syncs_commands:
            log.info("shards %s of %s: commands are synced by the process that runs shard 0",
                     self.settings.shard_ids, self.settings.shard_count)
            return
        if self.settings.test_guild_id is not None:
            guild = discord.Object(self.settings.test_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to test guild %s", len(synced), guild.id)
            return
        payload = [command.to_dict(self.tree) for command in self.tree.get_commands()]
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        try:
            unchanged = await self.store.get_meta(COMMANDS_HASH) == digest
        except RedisError as exc:
            log.warning("could not read the command hash (%s); syncing", exc)
            unchanged = False
        if unchanged:
            log.info("commands unchanged since the last sync; not syncing")
            return
        synced = await self.tree.sync()
        try:
            await self.store.set_meta(COMMANDS_HASH, digest)
        except RedisError as exc:
            log.warning("could not save the command hash (%s); the next start syncs again", exc)
        log.info("synced %d global commands", len(synced))

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await report(interaction, error)

    async def on_ready(self) -> None:
        shards = f" on shards {self.settings.shard_ids} of {self.settings.shard_count}" if self.settings.sharded else ""
        log.info("connected as %s (%s) to %d guilds%s", self.user, getattr(self.user, "id", "?"), len(self.guilds),
                 shards)

    async def close(self) -> None:
        """Stop taking commands, tell queued users, let running work finish (bounded), then disconnect."""
        if not self._closing:
            self._closing = True
            log.info("shutting down")
            try:
                await cancel_and_wait(self._background)
                await self.pipeline.shutdown(self.settings.shutdown_grace)
                if self._warm_up is not None:
                    await self._warm_up
            finally:
                await self.store.close()
                if isinstance(self.engine, RemoteEngine):
                    await self.engine.redis.aclose()
        await super().close()


class ShardedJamBot(JamBot, commands.AutoShardedBot):
    """The bot on ``JAMGEN_SHARD_IDS`` of ``JAMGEN_SHARD_COUNT`` shards: discord.py keeps one gateway connection
    per shard, and Discord sends each its guilds' events. Other processes run the other shards."""


def create_bot(settings: BotSettings, engine_settings: EngineSettings, **kwargs: Any) -> JamBot:
    """A :class:`ShardedJamBot` when ``settings`` name shards, else a :class:`JamBot` (``kwargs``: theirs)."""
    kind = ShardedJamBot if settings.sharded else JamBot
    return kind(settings, engine_settings, **kwargs)


def _remote(engine_settings: EngineSettings, redis: RedisSettings, models: list[str], name: str) -> RemoteEngine:
    assert redis.url is not None
    # timeouts: a Redis that hangs must not hold up a slash command (the inbox blocks 1 s at most)
    client = Redis.from_url(redis.url.get_secret_value(), socket_timeout=5.0, socket_connect_timeout=2.0)
    jobs = RedisJobs(client, prefix=redis.prefix, attempts=engine_settings.job_attempts,
                     keep_seconds=redis.keep_seconds)
    return RemoteEngine(engine_settings, jobs, name=name, models=models)
