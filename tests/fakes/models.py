"""Users, guilds, channels, roles and members of the fake Discord, and their gateway/REST payloads."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DISCORD_EPOCH_MS = 1_420_070_400_000

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_EXTERNAL_EMOJIS = 1 << 18
CONNECT = 1 << 20
SPEAK = 1 << 21
USE_APPLICATION_COMMANDS = 1 << 31
SEND_MESSAGES_IN_THREADS = 1 << 38
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
MANAGE_MESSAGES = 1 << 13
ALL_PERMISSIONS = (1 << 51) - 1

DEFAULT_MEMBER_PERMISSIONS = (
    ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | USE_EXTERNAL_EMOJIS
    | CONNECT
    | SPEAK
    | USE_APPLICATION_COMMANDS
    | SEND_MESSAGES_IN_THREADS
)
DEFAULT_BOT_PERMISSIONS = DEFAULT_MEMBER_PERMISSIONS | MANAGE_MESSAGES

DEFAULT_FILESIZE_LIMIT = 10 * 1024 * 1024

_snowflake_lock = threading.Lock()
_snowflake_state = {"last": 0}
_increment = itertools.count()


def make_snowflake(at: float | None = None, *, shard: tuple[int, int] | None = None) -> int:
    """A real-looking snowflake for the current (or given) wall-clock time, strictly increasing.

    ``shard=(shard_id, shard_count)``: a guild id that falls on that shard (its timestamp is moved up to
    ``shard_count - 1`` ms later).
    """
    millis = int((time.time() if at is None else at) * 1000) - DISCORD_EPOCH_MS
    candidate = (millis << 22) | (1 << 17) | (1 << 12) | (next(_increment) & 0xFFF)
    with _snowflake_lock:
        value = max(candidate, _snowflake_state["last"] + 1)
        if shard is not None:
            shard_id, shard_count = shard
            value += ((shard_id - shard_of(value, shard_count)) % shard_count) << 22
        _snowflake_state["last"] = value
    return value


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """The shard that gets a guild's events: ``(guild_id >> 22) % shard_count``; direct messages go to shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


def iso_now() -> str:
    """The current time as Discord writes timestamps."""
    return datetime.now(UTC).isoformat()


@dataclass
class FakeUser:
    """A Discord user (or the bot itself, with ``bot=True``)."""

    id: int
    name: str
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": None if self.bot else self.name,
            "avatar": None,
            "bot": self.bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "primary_guild": None,
        }


@dataclass
class FakeRole:
    """A guild role; the @everyone role's id is the guild's id."""

    id: int
    name: str
    permissions: int
    position: int = 0

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "description": None,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }


@dataclass
class FakeChannel:
    """A guild text channel."""

    id: int
    name: str
    guild_id: int
    position: int = 0
    refuse_threads: bool = False  # starting a thread here is answered 403 50001 Missing Access

    def payload(self, *, with_guild_id: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": 0,
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "nsfw": False,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
            "last_pin_timestamp": None,
        }
        if with_guild_id:
            data["guild_id"] = str(self.guild_id)
        return data


PUBLIC_THREAD, PRIVATE_THREAD = 11, 12
AUTO_ARCHIVE_DURATIONS = (60, 1440, 4320, 10080)


@dataclass
class FakeThread(FakeChannel):
    """A thread in a guild text channel (``parent_id``); ``guild.channel(id)`` finds it like any channel."""

    parent_id: int = 0
    owner_id: int = 0
    type: int = PUBLIC_THREAD
    archived: bool = False
    locked: bool = False
    auto_archive_duration: int = 1440
    archive_timestamp: str = field(default_factory=iso_now)
    create_timestamp: str = field(default_factory=iso_now)
    message_count: int = 0
    total_message_sent: int = 0
    member_ids: list[int] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "archived": self.archived,
            "archive_timestamp": self.archive_timestamp,
            "auto_archive_duration": self.auto_archive_duration,
            "locked": self.locked,
            "create_timestamp": self.create_timestamp,
        }
        if self.type == PRIVATE_THREAD:
            data["invitable"] = True
        return data

    def payload(self, *, with_guild_id: bool = True) -> dict[str, Any]:
        """The thread channel object (guild_id is always part of it)."""
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "parent_id": str(self.parent_id),
            "owner_id": str(self.owner_id),
            "last_message_id": None,
            "last_pin_timestamp": None,
            "rate_limit_per_user": 0,
            "flags": 0,
            "thread_metadata": self.metadata(),
            "message_count": self.message_count,
            "total_message_sent": self.total_message_sent,
            "member_count": len(self.member_ids),
        }

    def member_payload(self, user_id: int) -> dict[str, Any]:
        """The thread member object of ``user_id`` (``member`` of the answer to the thread's creator)."""
        return {"id": str(self.id), "user_id": str(user_id), "join_timestamp": self.create_timestamp, "flags": 0}


@dataclass
class FakeMember:
    """A user's membership of a guild; ``permissions`` None means computed from roles."""

    user: FakeUser
    roles: list[FakeRole]
    permissions: int | None = None
    joined_at: str = field(default_factory=iso_now)

    def payload(self, *, with_user: bool = True, permissions: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(role.id) for role in self.roles],
            "joined_at": self.joined_at,
            "nick": None,
            "avatar": None,
            "banner": None,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class FakeGuild:
    """A guild with its channels, roles and members; build it before the client connects."""

    id: int
    name: str
    channels: list[FakeChannel] = field(default_factory=list)
    threads: list[FakeThread] = field(default_factory=list)
    roles: list[FakeRole] = field(default_factory=list)
    members: list[FakeMember] = field(default_factory=list)
    owner_id: int = 0
    filesize_limit: int = DEFAULT_FILESIZE_LIMIT
    bot_permissions: int = DEFAULT_BOT_PERMISSIONS
    locale: str = "en-US"

    def __post_init__(self) -> None:
        if not any(role.id == self.id for role in self.roles):
            self.roles.insert(0, FakeRole(self.id, "@everyone", DEFAULT_MEMBER_PERMISSIONS))

    @property
    def everyone(self) -> FakeRole:
        return next(role for role in self.roles if role.id == self.id)

    def add_channel(self, name: str) -> FakeChannel:
        channel = FakeChannel(make_snowflake(), name, self.id, position=len(self.channels))
        self.channels.append(channel)
        return channel

    def add_thread(self, parent: FakeChannel, name: str, *, owner_id: int | None = None,
                   private: bool = False, thread_id: int | None = None) -> FakeThread:
        """A thread in ``parent`` (owned by ``owner_id``, else the guild's owner). Made before the client connects,
        it arrives in GUILD_CREATE (unless archived); the REST routes also dispatch THREAD_CREATE."""
        if isinstance(parent, FakeThread) or self.channel(parent.id) is not parent:
            raise ValueError(f"{parent.name!r} is not a text channel of {self.name}")
        owner = self.owner_id if owner_id is None else owner_id
        thread = FakeThread(thread_id or make_snowflake(), name, self.id, parent_id=parent.id, owner_id=owner,
                            type=PRIVATE_THREAD if private else PUBLIC_THREAD, member_ids=[owner])
        self.threads.append(thread)
        return thread

    def threads_of(self, channel_id: int) -> list[FakeThread]:
        """The threads of a text channel, oldest first."""
        return [thread for thread in self.threads if thread.parent_id == channel_id]

    def thread(self, thread_id: int) -> FakeThread | None:
        return next((thread for thread in self.threads if thread.id == thread_id), None)

    def add_role(self, name: str, permissions: int = 0) -> FakeRole:
        role = FakeRole(make_snowflake(), name, permissions, position=len(self.roles))
        self.roles.append(role)
        return role

    def add_member(self, user: FakeUser, roles: tuple[FakeRole, ...] | list[FakeRole] = (),
                   permissions: int | None = None) -> FakeMember:
        member = FakeMember(user, list(roles), permissions)
        self.members.append(member)
        return member

    def member(self, user_id: int) -> FakeMember | None:
        return next((member for member in self.members if member.user.id == user_id), None)

    def channel(self, channel_id: int) -> FakeChannel | None:
        """A text channel or a thread."""
        found = next((channel for channel in self.channels if channel.id == channel_id), None)
        return found if found is not None else self.thread(channel_id)

    def role(self, role_id: int) -> FakeRole | None:
        return next((role for role in self.roles if role.id == role_id), None)

    def permissions_of(self, member: FakeMember | None) -> int:
        """The member's guild-wide permissions: explicit, owner/administrator, else @everyone | roles."""
        if member is None:
            return self.everyone.permissions
        if member.permissions is not None:
            return member.permissions
        value = self.everyone.permissions
        for role in member.roles:
            value |= role.permissions
        if member.user.id == self.owner_id or value & ADMINISTRATOR:
            return ALL_PERMISSIONS
        return value

    def payload(self) -> dict[str, Any]:
        """The guild object as GET /guilds/{id} answers it."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": self.locale,
            "features": [],
            "roles": [role.payload() for role in self.roles],
            "emojis": [],
            "stickers": [],
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "approximate_member_count": len(self.members),
            "approximate_presence_count": 0,
        }

    def create_payload(self) -> dict[str, Any]:
        """The GUILD_CREATE dispatch for this guild."""
        return {
            **self.payload(),
            "joined_at": iso_now(),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "members": [member.payload() for member in self.members],
            "channels": [channel.payload(with_guild_id=False) for channel in self.channels],
            "threads": [thread.payload() for thread in self.threads if not thread.archived],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "embedded_activities": [],
        }


def ready_payload(*, bot_user: FakeUser, guild_ids: list[int], session_id: str, gateway_url: str,
                  application_id: int, shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """The READY dispatch: guilds arrive as unavailable stubs, then one GUILD_CREATE each."""
    return {
        "v": 10,
        "user": {**bot_user.payload(), "verified": True, "mfa_enabled": False},
        "guilds": [{"id": str(guild_id), "unavailable": True} for guild_id in guild_ids],
        "session_id": session_id,
        "session_type": "normal",
        "resume_gateway_url": gateway_url,
        "shard": list(shard),
        "application": {"id": str(application_id), "flags": 0},
        "private_channels": [],
        "relationships": [],
        "presences": [],
        "guild_join_requests": [],
        "geo_ordered_rtc_regions": ["rotterdam"],
        "user_settings": {},
    }
