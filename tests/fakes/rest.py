"""REST plumbing of the fake Discord (replies, errors, route table) and its user/guild/channel routes.

Interaction routes (callbacks and the application's webhooks) live in :mod:`tests.fakes.webhooks`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.fakes.messages import FakeAttachment, FakeMessage, RecordedRequest, new_message
from tests.fakes.models import DEFAULT_FILESIZE_LIMIT, FakeChannel, FakeGuild, FakeThread, iso_now, make_snowflake

if TYPE_CHECKING:
    from tests.fakes.discord import FakeDiscord


@dataclass
class Reply:
    """What the fake answers: a JSON body (None: no body, 204) with status and headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class ApiError(Exception):
    """An error answer in Discord's shape: ``{"code", "message"}``."""

    def __init__(self, status: int, code: int, message: str, **extra: Any) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.body = {"code": code, "message": message, **extra}


@dataclass
class Call:
    """A request as a route handler sees it."""

    params: dict[str, str]
    query: dict[str, str]
    body: Any
    files: list[FakeAttachment]
    record: RecordedRequest

    def int_param(self, name: str) -> int:
        return int(self.params[name])


Handler = Callable[["FakeDiscord", Call], Awaitable[Reply]]


@dataclass(frozen=True)
class RouteSpec:
    """One served route; ``name`` (``"POST /channels/{channel_id}/messages"``) is what tests refer to."""

    method: str
    template: str
    handler: Handler
    pattern: re.Pattern[str]

    @property
    def name(self) -> str:
        return f"{self.method} {self.template}"


def route(method: str, template: str, handler: Handler) -> RouteSpec:
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
    return RouteSpec(method, template, handler, re.compile(f"^{regex}$"))


def unknown(what: str, code: int) -> ApiError:
    return ApiError(404, code, f"Unknown {what}")


UNKNOWN_CHANNEL, UNKNOWN_GUILD, UNKNOWN_MEMBER, UNKNOWN_MESSAGE, UNKNOWN_USER = 10003, 10004, 10007, 10008, 10013
THREAD_ARCHIVED = 50083  # "Thread is archived"


def check_uploads(files: list[FakeAttachment], limit: int) -> None:
    """413 / 40005 when any file is larger than the upload limit."""
    for upload in files:
        if len(upload.data) > limit:
            raise ApiError(413, 40005, "Request entity too large")


# Users, application, gateway ---------------------------------------------------------------------------------


async def get_me(fake: FakeDiscord, call: Call) -> Reply:
    return Reply(body={**fake.bot_user.payload(), "verified": True, "mfa_enabled": False, "locale": "en-US"})


async def get_application(fake: FakeDiscord, call: Call) -> Reply:
    return Reply(body={
        "id": str(fake.application_id),
        "name": fake.bot_user.name,
        "icon": None,
        "description": "",
        "summary": "",
        "type": None,
        "bot": fake.bot_user.payload(),
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": fake.owner.payload(),
        "team": None,
        "verify_key": "0" * 64,
        "flags": 0,
        "rpc_origins": [],
        "tags": [],
        "redirect_uris": [],
        "interactions_endpoint_url": None,
        "approximate_guild_count": len(fake.guilds),
    })


async def get_gateway(fake: FakeDiscord, call: Call) -> Reply:
    return Reply(body={"url": fake.gateway_url})


async def get_gateway_bot(fake: FakeDiscord, call: Call) -> Reply:
    limit = {"total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1}
    return Reply(body={"url": fake.gateway_url, "shards": 1, "session_start_limit": limit})


async def create_dm(fake: FakeDiscord, call: Call) -> Reply:
    user = fake.users.get(int(call.body["recipient_id"]))
    if user is None:
        raise unknown("User", UNKNOWN_USER)
    return Reply(body=fake.dm_channel_payload(fake.dm_channel_for(user)))


# Application commands -----------------------------------------------------------------------------------------


def _register(fake: FakeDiscord, scope: int | str, definitions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    previous = {(command["name"], command.get("type", 1)): command for command in fake.commands.get(scope, [])}
    registered = []
    for definition in definitions:
        kind = definition.get("type", 1)
        old = previous.get((definition["name"], kind))
        command = {
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "nsfw": False,
            "contexts": None,
            "integration_types": [0],
            "name_localizations": None,
            "description_localizations": None,
            **definition,
            "id": old["id"] if old else str(make_snowflake()),
            "application_id": str(fake.application_id),
            "type": kind,
            "version": str(make_snowflake()),
        }
        if scope != "global":
            command["guild_id"] = str(scope)
        registered.append(command)
    fake.commands[scope] = registered
    fake.command_puts += 1
    return registered


def _command_scope(fake: FakeDiscord, call: Call) -> int | str:
    if call.int_param("application_id") != fake.application_id:
        raise ApiError(403, 50001, "Missing Access")
    if "guild_id" not in call.params:
        return "global"
    guild_id = call.int_param("guild_id")
    if guild_id not in fake.guilds:
        raise ApiError(403, 50001, "Missing Access")
    return guild_id


async def put_commands(fake: FakeDiscord, call: Call) -> Reply:
    return Reply(body=_register(fake, _command_scope(fake, call), call.body or []))


async def get_commands(fake: FakeDiscord, call: Call) -> Reply:
    return Reply(body=fake.commands.get(_command_scope(fake, call), []))


# Guilds and channels ------------------------------------------------------------------------------------------


def _guild(fake: FakeDiscord, call: Call) -> FakeGuild:
    guild = fake.guilds.get(call.int_param("guild_id"))
    if guild is None:
        raise unknown("Guild", UNKNOWN_GUILD)
    return guild


async def get_guild(fake: FakeDiscord, call: Call) -> Reply:
    return Reply(body=_guild(fake, call).payload())


async def get_roles(fake: FakeDiscord, call: Call) -> Reply:
    return Reply(body=[role.payload() for role in _guild(fake, call).roles])


async def get_member(fake: FakeDiscord, call: Call) -> Reply:
    member = _guild(fake, call).member(call.int_param("user_id"))
    if member is None:
        raise unknown("Member", UNKNOWN_MEMBER)
    return Reply(body=member.payload())


def find_channel(fake: FakeDiscord, channel_id: int) -> tuple[FakeGuild, FakeChannel] | None:
    """The guild and channel (text channel or thread) with ``channel_id``; None when it is no guild channel."""
    for guild in fake.guilds.values():
        channel = guild.channel(channel_id)
        if channel is not None:
            return guild, channel
    return None


def find_thread(fake: FakeDiscord, thread_id: int) -> FakeThread | None:
    found = find_channel(fake, thread_id)
    return found[1] if found is not None and isinstance(found[1], FakeThread) else None


async def dispatch_thread(fake: FakeDiscord, event: str, thread: FakeThread, **extra: Any) -> None:
    """THREAD_CREATE / THREAD_UPDATE with the thread's payload (and ``extra``, e.g. ``newly_created``)."""
    if fake.gateway.ready.is_set():
        await fake.gateway.dispatch(event, {**thread.payload(), **extra})


def check_writable(fake: FakeDiscord, channel_id: int) -> None:
    """400 / 50083 for an edit or delete in an archived thread, as on Discord."""
    thread = find_thread(fake, channel_id)
    if thread is not None and thread.archived:
        raise ApiError(400, THREAD_ARCHIVED, "Thread is archived")


async def unarchive_for_post(fake: FakeDiscord, channel_id: int) -> None:
    """A post into an archived thread unarchives it (THREAD_UPDATE), unless it is locked: 400 / 50083."""
    thread = find_thread(fake, channel_id)
    if thread is None or not thread.archived:
        return
    if thread.locked:
        raise ApiError(400, THREAD_ARCHIVED, "Thread is archived")
    thread.archived = False
    thread.archive_timestamp = iso_now()
    await dispatch_thread(fake, "THREAD_UPDATE", thread)


def count_in_thread(fake: FakeDiscord, message: FakeMessage, delta: int) -> None:
    """Keep a thread's message_count (deleted messages do not count) and total_message_sent."""
    thread = find_thread(fake, message.channel_id)
    if thread is None or message.ephemeral:
        return
    thread.message_count = max(0, thread.message_count + delta)
    if delta > 0:
        thread.total_message_sent += delta


def _channel_context(fake: FakeDiscord, channel_id: int) -> tuple[FakeGuild | None, dict[str, Any]]:
    """The guild (None for a DM) and REST payload of a channel or thread; 404 when unknown."""
    found = find_channel(fake, channel_id)
    if found is not None:
        return found[0], found[1].payload()
    if channel_id in fake.dm_channels:
        return None, fake.dm_channel_payload(channel_id)
    raise unknown("Channel", UNKNOWN_CHANNEL)


async def get_channel(fake: FakeDiscord, call: Call) -> Reply:
    return Reply(body=_channel_context(fake, call.int_param("channel_id"))[1])


async def post_channel_message(fake: FakeDiscord, call: Call) -> Reply:
    channel_id = call.int_param("channel_id")
    guild, _ = _channel_context(fake, channel_id)
    check_uploads(call.files, guild.filesize_limit if guild else DEFAULT_FILESIZE_LIMIT)
    await unarchive_for_post(fake, channel_id)
    message = new_message(channel_id=channel_id, author_id=fake.bot_user.id, via="channel",
                          guild_id=guild.id if guild else None)
    message.apply(call.body or {}, call.files)
    await fake.add_message(message)
    return Reply(body=fake.message_payload(message))


def _channel_message(fake: FakeDiscord, call: Call) -> FakeMessage:
    channel_id = call.int_param("channel_id")
    _channel_context(fake, channel_id)
    message = fake.message_by_id(call.int_param("message_id"))
    if message is None or message.channel_id != channel_id or message.deleted or message.ephemeral:
        raise unknown("Message", UNKNOWN_MESSAGE)
    return message


async def get_channel_message(fake: FakeDiscord, call: Call) -> Reply:
    return Reply(body=fake.message_payload(_channel_message(fake, call)))


async def edit_channel_message(fake: FakeDiscord, call: Call) -> Reply:
    message = _channel_message(fake, call)
    guild, _ = _channel_context(fake, message.channel_id)
    check_writable(fake, message.channel_id)
    check_uploads(call.files, guild.filesize_limit if guild else DEFAULT_FILESIZE_LIMIT)
    await fake.edit_message(message, call.body or {}, call.files)
    return Reply(body=fake.message_payload(message))


async def delete_channel_message(fake: FakeDiscord, call: Call) -> Reply:
    message = _channel_message(fake, call)
    check_writable(fake, message.channel_id)
    await fake.delete_message(message)
    return Reply(status=204)


async def get_channel_messages(fake: FakeDiscord, call: Call) -> Reply:
    channel_id = call.int_param("channel_id")
    _channel_context(fake, channel_id)
    limit = int(call.query.get("limit", 50))
    before = int(call.query["before"]) if "before" in call.query else None
    after = int(call.query["after"]) if "after" in call.query else None
    found = [
        message
        for message in reversed(fake.messages)
        if message.channel_id == channel_id and not message.deleted and not message.ephemeral
        and (before is None or message.id < before) and (after is None or message.id > after)
    ]
    return Reply(body=[fake.message_payload(message) for message in found[:limit]])


def base_routes() -> list[RouteSpec]:
    return [
        route("GET", "/users/@me", get_me),
        route("POST", "/users/@me/channels", create_dm),
        route("GET", "/oauth2/applications/@me", get_application),
        route("GET", "/gateway", get_gateway),
        route("GET", "/gateway/bot", get_gateway_bot),
        route("PUT", "/applications/{application_id}/commands", put_commands),
        route("GET", "/applications/{application_id}/commands", get_commands),
        route("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", put_commands),
        route("GET", "/applications/{application_id}/guilds/{guild_id}/commands", get_commands),
        route("GET", "/guilds/{guild_id}", get_guild),
        route("GET", "/guilds/{guild_id}/roles", get_roles),
        route("GET", "/guilds/{guild_id}/members/{user_id}", get_member),
        route("GET", "/channels/{channel_id}", get_channel),
        route("POST", "/channels/{channel_id}/messages", post_channel_message),
        route("GET", "/channels/{channel_id}/messages", get_channel_messages),
        route("GET", "/channels/{channel_id}/messages/{message_id}", get_channel_message),
        route("PATCH", "/channels/{channel_id}/messages/{message_id}", edit_channel_message),
        route("DELETE", "/channels/{channel_id}/messages/{message_id}", delete_channel_message),
    ]
