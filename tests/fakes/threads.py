"""Threads in the fake Discord: starting one (with or without a message), editing a channel or thread, and the
rules for messages in an archived thread.

A thread is a :class:`~tests.fakes.models.FakeThread` in ``guild.threads``; ``guild.channel(id)`` finds it, so the
message routes of :mod:`tests.fakes.rest` serve threads like any channel. Each change is told to the gateway
(THREAD_CREATE with ``newly_created``, THREAD_UPDATE), so discord.py caches the thread (``guild.get_thread``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.fakes.models import PRIVATE_THREAD, PUBLIC_THREAD, FakeChannel, FakeGuild, FakeThread, iso_now
from tests.fakes.openapi import discord_error_body
from tests.fakes.rest import (
    UNKNOWN_CHANNEL,
    UNKNOWN_MESSAGE,
    ApiError,
    Call,
    Reply,
    RouteSpec,
    dispatch_thread,
    find_channel,
    route,
    unknown,
)

if TYPE_CHECKING:
    from tests.fakes.discord import FakeDiscord

MISSING_ACCESS = 50001
THREAD_ALREADY_CREATED = 160004  # "A thread has already been created for this message"
HAS_THREAD = 1 << 5  # message flag of a thread's starter message
ANNOUNCEMENT_THREAD = 10


def _parent(fake: FakeDiscord, call: Call) -> tuple[FakeGuild, FakeChannel]:
    found = find_channel(fake, call.int_param("channel_id"))
    if found is None:
        raise unknown("Channel", UNKNOWN_CHANNEL)
    guild, channel = found
    if isinstance(channel, FakeThread):
        raise ApiError(400, 50024, "Cannot execute action on this channel type")
    if channel.refuse_threads:
        raise ApiError(403, MISSING_ACCESS, "Missing Access")
    return guild, channel


async def _start(fake: FakeDiscord, guild: FakeGuild, parent: FakeChannel, body: dict[str, Any], *,
                 kind: int, thread_id: int | None = None) -> Reply:
    if kind == ANNOUNCEMENT_THREAD:  # only announcement channels have those; the fake has none
        raise ApiError(400, 50024, "Cannot execute action on this channel type")
    thread = guild.add_thread(parent, body["name"], owner_id=fake.bot_user.id, private=kind == PRIVATE_THREAD,
                              thread_id=thread_id)
    if body.get("auto_archive_duration") is not None:
        thread.auto_archive_duration = int(body["auto_archive_duration"])
    await dispatch_thread(fake, "THREAD_CREATE", thread, newly_created=True)
    return Reply(status=201, body={**thread.payload(), "member": thread.member_payload(fake.bot_user.id)})


async def delete_thread(fake: FakeDiscord, guild: FakeGuild, thread: FakeThread) -> None:
    """A moderator deletes ``thread``: it is gone from the guild, and THREAD_DELETE tells the gateway (with the
    fields Discord sends: id, guild_id, parent_id, type)."""
    guild.threads.remove(thread)
    if fake.gateway.ready.is_set():
        await fake.gateway.dispatch("THREAD_DELETE", {key: thread.payload()[key]
                                                      for key in ("id", "guild_id", "parent_id", "type")})


async def start_thread(fake: FakeDiscord, call: Call) -> Reply:
    """POST /channels/{channel_id}/threads: a thread without a starter message (private unless ``type`` says)."""
    guild, parent = _parent(fake, call)
    body = call.body or {}
    return await _start(fake, guild, parent, body, kind=int(body.get("type") or PRIVATE_THREAD))


async def start_thread_from_message(fake: FakeDiscord, call: Call) -> Reply:
    """POST /channels/{channel_id}/messages/{message_id}/threads: a public thread whose id is the message's."""
    guild, parent = _parent(fake, call)
    message = fake.message_by_id(call.int_param("message_id"))
    if message is None or message.channel_id != parent.id or message.deleted or message.ephemeral:
        raise unknown("Message", UNKNOWN_MESSAGE)
    if guild.thread(message.id) is not None:
        raise ApiError(400, THREAD_ALREADY_CREATED, "A thread has already been created for this message")
    reply = await _start(fake, guild, parent, call.body or {}, kind=PUBLIC_THREAD, thread_id=message.id)
    message.flags |= HAS_THREAD
    return reply


async def edit_channel(fake: FakeDiscord, call: Call) -> Reply:
    """PATCH /channels/{channel_id}: a thread's name, archived, locked, auto_archive_duration (THREAD_UPDATE), or a
    text channel's name (CHANNEL_UPDATE)."""
    found = find_channel(fake, call.int_param("channel_id"))
    if found is None:
        raise unknown("Channel", UNKNOWN_CHANNEL)
    _, channel = found
    body = call.body or {}
    if isinstance(channel, FakeThread):
        _check_thread_body(fake, call.record.route, body)
    if body.get("name") is not None:
        channel.name = body["name"]
    if not isinstance(channel, FakeThread):
        if fake.gateway.ready.is_set():
            await fake.gateway.dispatch("CHANNEL_UPDATE", channel.payload())
        return Reply(body=channel.payload())
    if body.get("archived") is not None and bool(body["archived"]) != channel.archived:
        channel.archived = bool(body["archived"])
        channel.archive_timestamp = iso_now()
    if body.get("locked") is not None:
        channel.locked = bool(body["locked"])
    if body.get("auto_archive_duration") is not None:
        channel.auto_archive_duration = int(body["auto_archive_duration"])
    await dispatch_thread(fake, "THREAD_UPDATE", channel)
    return Reply(body=channel.payload())


def _check_thread_body(fake: FakeDiscord, route_name: str, body: Any) -> None:
    """The description lets any body through PATCH /channels/{id} (its DM branch takes anything): a thread's edit
    is checked against the thread branch, and refused 400 / 50035 like the front door's failures."""
    validator = fake.rest.validator
    errors = validator.validate_schema("UpdateThreadRequestPartial", body) if validator is not None else []
    if errors:
        fake.validation_errors.extend(f"{route_name}: {error}" for error in errors)
        refusal = discord_error_body(errors)
        raise ApiError(400, refusal["code"], refusal["message"], errors=refusal["errors"])


def thread_routes() -> list[RouteSpec]:
    return [
        route("POST", "/channels/{channel_id}/threads", start_thread),
        route("POST", "/channels/{channel_id}/messages/{message_id}/threads", start_thread_from_message),
        route("PATCH", "/channels/{channel_id}", edit_channel),
    ]
