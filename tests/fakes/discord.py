"""A fake Discord on 127.0.0.1 (REST + gateway) that the real discord.py client talks to, unmodified.

Usage::

    async with FakeDiscord() as fake:
        guild = fake.add_guild()
        channel = guild.add_channel("jams")
        alice = fake.add_user("alice")
        guild.add_member(alice)
        async with connected(fake, bot):          # points discord.py at the fake, logs in, waits for ready
            interaction = await fake.send_command("jam", {"prompt": "lofi"}, user=alice, guild=guild,
                                                  channel=channel)
            await interaction.wait_callback()

Every request body is validated against Discord's OpenAPI description (see :mod:`tests.fakes.openapi`);
failures are answered 400 like Discord does and collected in :attr:`FakeDiscord.validation_errors`. A request
that matches no route the fake serves is answered 404 and collected in :attr:`FakeDiscord.unknown_routes`; the
bot tests' fixture fails a test that leaves either non-empty (:func:`tests.bot_harness.fake_world`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import web

from tests.fakes.gateway import Gateway
from tests.fakes.interactions import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    MESSAGE_COMMAND,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    Invoker,
    Resolver,
    command_data,
    context_menu_data,
    find_command,
    interaction_payload,
    modal_submit_data,
    nest_options,
    option_definitions,
)
from tests.fakes.messages import (
    CallbackRecord,
    FakeAttachment,
    FakeInteraction,
    FakeMessage,
    RecordedRequest,
    new_message,
)
from tests.fakes.models import (
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeThread,
    FakeUser,
    make_snowflake,
    ready_payload,
    shard_of,
)
from tests.fakes.openapi import OpenApiValidator
from tests.fakes.rest import base_routes, count_in_thread
from tests.fakes.threads import thread_routes
from tests.fakes.webhooks import webhook_routes
from tests.fakes.wire import API_PREFIX, RestFrontDoor

__all__ = [
    "CallbackRecord",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeThread",
    "FakeUser",
    "RecordedRequest",
    "connected",
    "pointed_at",
]

log = logging.getLogger(__name__)

DEFAULT_APPLICATION_ID = 1_180_000_000_000_000_001
MAX_BODY = 256 * 1024 * 1024
POLL_INTERVAL = 0.05


class FakeDiscord:
    """REST under ``base_url`` and the gateway at ``gateway_url``, with the state a test sets up and inspects."""

    def __init__(self, *, application_id: int = DEFAULT_APPLICATION_ID, bot_user_id: int = DEFAULT_APPLICATION_ID,
                 validate: bool = True, interaction_deadline: float = 3.0, token_ttl: float = 900.0,
                 heartbeat_interval_ms: int = 41_250, bot_name: str = "jamgen") -> None:
        self.application_id = application_id
        self.bot_user_id = bot_user_id
        self.bot_user = FakeUser(bot_user_id, bot_name, bot=True)
        self.owner = FakeUser(make_snowflake(), "app owner")
        self.interaction_deadline = interaction_deadline
        self.token_ttl = token_ttl
        self.users: dict[int, FakeUser] = {self.bot_user.id: self.bot_user, self.owner.id: self.owner}
        self.guilds: dict[int, FakeGuild] = {}
        self.dm_channels: dict[int, FakeUser] = {}
        self.commands: dict[int | str, list[dict[str, Any]]] = {}
        self.command_puts = 0
        self.messages: list[FakeMessage] = []
        self.requests: list[RecordedRequest] = []
        self.validation_errors: list[str] = []
        self.unknown_routes: list[str] = []  # "GET /no/such/route": requests no served route matched (answered 404)
        self.interactions: dict[int, FakeInteraction] = {}
        self.uploads: dict[int, FakeAttachment] = {}  # files users attached to commands (ATTACHMENT options)
        self.downloads: list[int] = []  # the attachment ids the CDN served, in order
        self.gateway = Gateway(heartbeat_interval_ms=heartbeat_interval_ms, on_identify=self._on_identify,
                               on_change=self.notify)
        self.base_url = ""
        self.gateway_url = ""
        self.rest = RestFrontDoor(self, [*base_routes(), *thread_routes(), *webhook_routes()],
                                  OpenApiValidator.load() if validate else None, validate=validate)
        self._messages_by_id: dict[int, FakeMessage] = {}
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # Lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self.rest.serve_attachment)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self.rest.handle)
        app.router.add_route("*", "/{tail:.*}", self.rest.handle_outside_api)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}{API_PREFIX}"
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway"
        log.info("fake Discord listening on 127.0.0.1:%s", port)

    async def close(self) -> None:
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Setup ----------------------------------------------------------------------------------------------------

    def add_user(self, name: str) -> FakeUser:
        user = FakeUser(make_snowflake(), name)
        self.users[user.id] = user
        return user

    def add_guild(self, name: str = "jam server", *, owner_id: int | None = None,
                  shard: tuple[int, int] | None = None) -> FakeGuild:
        """A guild with the bot (and the owner) as members; it is sent in GUILD_CREATE after READY.

        ``shard=(shard_id, shard_count)``: its id falls on that shard, so a client holding it gets its events.
        """
        owner = self.users.get(owner_id) if owner_id is not None else None
        if owner is None:
            owner = self.add_user(f"{name} owner") if owner_id is None else FakeUser(owner_id, "owner")
            self.users[owner.id] = owner
        guild = FakeGuild(make_snowflake(shard=shard), name, owner_id=owner.id)
        guild.add_member(self.bot_user)
        guild.add_member(owner)
        if self.gateway.ready.is_set():
            log.warning("guild %s added after READY: the connected client will not see it", name)
        self.guilds[guild.id] = guild
        return guild

    @property
    def heartbeat_ack(self) -> bool:
        return self.gateway.heartbeat_ack

    @heartbeat_ack.setter
    def heartbeat_ack(self, value: bool) -> None:
        self.gateway.heartbeat_ack = value

    # Waiting --------------------------------------------------------------------------------------------------

    async def wait_until_ready(self, timeout: float = 10) -> None:
        """Until the client identified and every GUILD_CREATE went out."""
        try:
            await asyncio.wait_for(self.gateway.ready.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"client did not identify within {timeout}s; {self.summary()}") from None

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        """Until ``predicate()`` is true; it is re-checked after every request, gateway frame and dispatch, and
        every ``POLL_INTERVAL`` seconds besides (for predicates about state outside the fake)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            changed = self._changed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition {_describe(predicate)} still false after {timeout}s; {self.summary()}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, POLL_INTERVAL))

    def notify(self) -> None:
        """Wake up :meth:`wait_for` (called after every request, gateway frame and dispatch)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def summary(self) -> str:
        """Recent activity, for error messages."""
        recent = ", ".join(str(request) for request in self.requests[-8:]) or "none"
        return (f"gateway {self.gateway.stats.connections} connections/{self.gateway.stats.identifies} identifies/"
                f"{self.gateway.stats.resumes} resumes; last requests: {recent}; "
                f"validation errors: {self.validation_errors[-3:]}")

    # Faults ---------------------------------------------------------------------------------------------------

    def fail_next(self, route: str, status: int, times: int = 1, *, retry_after: float = 0.1,
                  after_effect: bool = False) -> None:
        """Answer the next ``times`` requests to ``route`` (e.g. ``"POST /webhooks/{application_id}/{token}"``)
        with ``status``; a 429 comes with Discord's body and X-RateLimit-*/Via headers.

        ``after_effect``: carry each request out first (the message is posted) and only then answer ``status``,
        as when Discord's edge times out on a request its backend completed: the answer is lost, not the effect.
        """
        self.rest.fail_next(route, status, times, retry_after, after_effect=after_effect)

    def expire_token(self, interaction: FakeInteraction) -> None:
        """Make the interaction's token count as older than ``token_ttl``."""
        interaction.token_expired = True

    async def disconnect(self, code: int = 4000, shard: tuple[int, int] | None = None) -> None:
        """Close the gateway sockets (``shard``: that shard's only); the client should RESUME and get what it
        missed."""
        await self.gateway.disconnect(code, shard)

    # Interactions ---------------------------------------------------------------------------------------------

    async def send_command(self, name: str, options: dict[str, object] | None = None, *, user: FakeUser,
                           guild: FakeGuild | None, channel: FakeChannel | int, subcommands: tuple[str, ...] = (),
                           permissions: int | None = None, attachment_size_limit: int = 10 * 1024 * 1024,
                           raw_options: list[dict[str, Any]] | None = None,
                           guild_command: bool | None = None) -> FakeInteraction:
        """Dispatch a slash command (INTERACTION_CREATE type 2); ``guild=None`` is a DM."""
        invoker = self._invoker(user, guild, channel, permissions, attachment_size_limit)
        data = self._command_data(name, options or {}, guild, subcommands, raw_options, guild_command,
                                  invoker.channel_id)
        return await self._dispatch_interaction(APPLICATION_COMMAND, data, invoker)

    async def send_message_command(self, name: str, target: FakeMessage, *, user: FakeUser, guild: FakeGuild | None,
                                   permissions: int | None = None) -> FakeInteraction:
        """Dispatch a message context-menu command (type 2, command type 3) used on ``target``, in its channel."""
        command, registered_in_guild = find_command(self.commands, name, guild, MESSAGE_COMMAND)
        invoker = self._invoker(user, guild, target.channel_id, permissions, 10 * 1024 * 1024)
        data = context_menu_data(command=command, name=name, kind=MESSAGE_COMMAND, guild_command=registered_in_guild,
                                 guild=guild, target_id=target.id,
                                 resolved={"messages": {str(target.id): self.message_payload(target)}})
        return await self._dispatch_interaction(APPLICATION_COMMAND, data, invoker)

    async def submit_modal(self, interaction: FakeInteraction, values: dict[str, str]) -> FakeInteraction:
        """Dispatch the submission (type 5) of the modal the bot answered ``interaction`` with; ``values`` by the
        text inputs' custom_id."""
        callback = interaction.callback
        if callback is None or callback.type != 9 or callback.data is None:
            raise ValueError(f"the bot answered interaction {interaction.id} with no modal: {callback}")
        guild = self.guilds.get(interaction.guild_id) if interaction.guild_id is not None else None
        invoker = self._invoker(interaction.user, guild, interaction.channel_id, None,
                                interaction.attachment_size_limit)
        return await self._dispatch_interaction(MODAL_SUBMIT, modal_submit_data(callback.data, values), invoker)

    async def send_autocomplete(self, name: str, options: dict[str, object], *, focused: str, user: FakeUser,
                                guild: FakeGuild | None, channel: FakeChannel | int,
                                subcommands: tuple[str, ...] = ()) -> FakeInteraction:
        """Dispatch an autocomplete request (type 4) with ``focused`` as the option being typed."""
        invoker = self._invoker(user, guild, channel, None, 10 * 1024 * 1024)
        data = self._command_data(name, options, guild, subcommands, None, None, invoker.channel_id)
        leaves = data["options"]
        for name_ in subcommands:
            leaves = next(option for option in leaves if option["name"] == name_)["options"]
        for option in leaves:
            if option["name"] == focused:
                option["focused"] = True
        return await self._dispatch_interaction(AUTOCOMPLETE, data, invoker)

    async def press_button(self, message: FakeMessage, custom_id: str, *, user: FakeUser, guild: FakeGuild | None,
                           permissions: int | None = None) -> FakeInteraction:
        """Dispatch a button press (type 3) on a message the bot sent."""
        if custom_id not in message.custom_ids():
            raise ValueError(f"message {message.id} has no component {custom_id!r}; it has {message.custom_ids()}")
        invoker = self._invoker(user, guild, message.channel_id, permissions, 10 * 1024 * 1024)
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._dispatch_interaction(MESSAGE_COMPONENT, data, invoker, message)

    def _invoker(self, user: FakeUser, guild: FakeGuild | None, channel: FakeChannel | int,
                 permissions: int | None, attachment_size_limit: int) -> Invoker:
        channel_id = channel.id if isinstance(channel, FakeChannel) else channel
        if guild is None:
            self.dm_channels[channel_id] = user
        return Invoker(user, guild, channel_id, permissions, attachment_size_limit)

    def _command_data(self, name: str, options: dict[str, object], guild: FakeGuild | None,
                      subcommands: tuple[str, ...], raw_options: list[dict[str, Any]] | None,
                      guild_command: bool | None, channel_id: int) -> dict[str, Any]:
        command, registered_in_guild = find_command(self.commands, name, guild)
        declared = option_definitions(command, subcommands)

        def uploaded(attachment: FakeAttachment) -> dict[str, Any]:
            """A file attached to the command: kept for the CDN, described as Discord does (ephemeral)."""
            self.uploads[attachment.id] = attachment
            return attachment.payload(self.attachments_base, channel_id, ephemeral=True)

        resolver = Resolver(guild, self.users, uploaded)
        leaves = [resolver.option(key, value, declared.get(key)) for key, value in options.items()]
        return command_data(
            name=name,
            command=command,
            guild_command=registered_in_guild if guild_command is None else guild_command,
            guild=guild,
            options=raw_options if raw_options is not None else nest_options(leaves, subcommands),
            resolved=resolver.resolved,
        )

    async def _dispatch_interaction(self, kind: int, data: dict[str, Any], invoker: Invoker,
                                    message: FakeMessage | None = None) -> FakeInteraction:
        if not self.gateway.ready.is_set():
            raise RuntimeError("no client has identified yet: await fake.wait_until_ready() first")
        guild_id = invoker.guild.id if invoker.guild else None
        if not self.gateway.holds(guild_id):
            raise RuntimeError(f"no client holds the shard of guild {guild_id}; shards identified: "
                               f"{self.gateway.shards}")
        payload = interaction_payload(application_id=self.application_id, kind=kind, data=data, invoker=invoker,
                                      message=self.message_payload(message) if message else None)
        interaction = FakeInteraction(
            id=int(payload["id"]), token=payload["token"], type=kind, user=invoker.user,
            guild_id=invoker.guild.id if invoker.guild else None, channel_id=invoker.channel_id,
            created_at=time.monotonic(), attachment_size_limit=invoker.attachment_size_limit, payload=payload,
            message=message, _waiter=self.wait_for,
        )
        self.interactions[interaction.id] = interaction
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        return interaction

    def interaction_by_token(self, token: str) -> FakeInteraction | None:
        return next((item for item in self.interactions.values() if item.token == token), None)

    # Messages (used by the route handlers) --------------------------------------------------------------------

    def message_by_id(self, message_id: int) -> FakeMessage | None:
        return self._messages_by_id.get(message_id)

    @property
    def attachments_base(self) -> str:
        """Where the fake's CDN serves files: ``{attachments_base}/{channel_id}/{attachment_id}/{filename}``."""
        return self.base_url.removesuffix(API_PREFIX) + "/attachments"

    def message_payload(self, message: FakeMessage) -> dict[str, Any]:
        interaction = self.interactions.get(message.interaction_id) if message.interaction_id else None
        author = self.users.get(message.author_id, self.bot_user)
        return message.payload(author=author, attachments_base=self.attachments_base,
                               interaction=interaction.metadata() if interaction else None)

    def attachment(self, attachment_id: int) -> FakeAttachment | None:
        """A file the CDN serves: one in a message, or one attached to a command."""
        for message in self.messages:
            for attachment in message.attachments:
                if attachment.id == attachment_id:
                    return attachment
        return self.uploads.get(attachment_id)

    async def post_message(self, channel: FakeChannel, user: FakeUser, content: str = "",
                           attachments: list[FakeAttachment] | None = None) -> FakeMessage:
        """A message a user posts (``via="user"``), e.g. with an audio file for a context-menu command."""
        message = new_message(channel_id=channel.id, author_id=user.id, via="user", content=content,
                              attachments=list(attachments or []), guild_id=channel.guild_id)
        await self.add_message(message)
        return message

    async def add_message(self, message: FakeMessage) -> None:
        self.messages.append(message)
        self._messages_by_id[message.id] = message
        count_in_thread(self, message, 1)
        await self._dispatch_message_event("MESSAGE_CREATE", message)

    async def edit_message(self, message: FakeMessage, body: dict[str, Any], files: list[FakeAttachment]) -> None:
        message.record_edit(body, files)
        await self._dispatch_message_event("MESSAGE_UPDATE", message)

    async def delete_message(self, message: FakeMessage) -> None:
        message.deleted = True
        count_in_thread(self, message, -1)
        if not message.ephemeral and self.gateway.ready.is_set():
            data = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
            await self.gateway.dispatch("MESSAGE_DELETE", data)

    async def _dispatch_message_event(self, event: str, message: FakeMessage) -> None:
        """Discord tells the gateway about every message that is not ephemeral, the bot's own included."""
        if message.ephemeral or not self.gateway.ready.is_set():
            return
        data = self.message_payload(message)
        guild = self.guilds.get(message.guild_id) if message.guild_id is not None else None
        member = guild.member(message.author_id) if guild else None
        if guild is not None:
            data["guild_id"] = str(guild.id)
        if member is not None:
            data["member"] = member.payload(with_user=False)
        await self.gateway.dispatch(event, data)

    def dm_channel_for(self, user: FakeUser) -> int:
        existing = next((channel_id for channel_id, other in self.dm_channels.items() if other.id == user.id), None)
        if existing is not None:
            return existing
        channel_id = make_snowflake()
        self.dm_channels[channel_id] = user
        return channel_id

    def dm_channel_payload(self, channel_id: int) -> dict[str, Any]:
        recipient = self.dm_channels[channel_id]
        return {"id": str(channel_id), "type": 1, "last_message_id": None, "flags": 0,
                "recipients": [recipient.payload()]}

    # Gateway --------------------------------------------------------------------------------------------------

    def _on_identify(self, session_id: str, shard: tuple[int, int]) -> list[tuple[str, dict[str, Any]]]:
        """READY and a GUILD_CREATE for each guild on ``shard`` (``(shard_id, shard_count)``)."""
        shard_id, shard_count = shard
        guilds = [guild for guild in self.guilds.values() if shard_of(guild.id, shard_count) == shard_id]
        ready = ready_payload(bot_user=self.bot_user, guild_ids=[guild.id for guild in guilds],
                              session_id=session_id, gateway_url=self.gateway_url,
                              application_id=self.application_id, shard=shard)
        return [("READY", ready), *(("GUILD_CREATE", guild.create_payload()) for guild in guilds)]


def _describe(predicate: Callable[[], bool]) -> str:
    code = getattr(predicate, "__code__", None)
    where = f" ({code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno})" if code else ""
    return f"{getattr(predicate, '__qualname__', repr(predicate))}{where}"


@contextlib.contextmanager
def pointed_at(fake: FakeDiscord) -> Iterator[None]:
    """Point discord.py's REST base and default gateway at the fake; restore both on exit."""
    old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.base_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


@contextlib.asynccontextmanager
async def connected(fake: FakeDiscord, client: discord.Client, *, token: str = "fake-token",
                    timeout: float = 10) -> AsyncIterator[discord.Client]:
    """Log ``client`` in against the fake, run it, wait until both sides are ready; close it on exit."""
    with pointed_at(fake):
        await client.login(token)
        runner = asyncio.create_task(client.connect(reconnect=True), name="discord-client")
        try:
            ready = asyncio.ensure_future(client.wait_until_ready())
            done, _ = await asyncio.wait({runner, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                ready.cancel()
                if runner in done:
                    runner.result()  # raises the client's error
                raise TimeoutError(f"client not ready within {timeout}s; {fake.summary()}")
            yield client
        finally:
            await client.close()
            try:
                await asyncio.wait_for(runner, 5)
            except (Exception, asyncio.CancelledError) as error:  # the test's own outcome matters more
                log.warning("discord client ended with %r", error)
