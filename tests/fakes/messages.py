"""Messages, interactions and recorded requests of the fake Discord."""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.models import FakeUser, iso_now, make_snowflake

EPHEMERAL = 1 << 6
LOADING = 1 << 7

# Message types: https://discord.com/developers/docs/resources/message#message-object-message-types
DEFAULT_MESSAGE = 0
CHAT_INPUT_COMMAND = 20
CONTEXT_MENU_COMMAND = 23


@dataclass
class FakeAttachment:
    """An uploaded file, as the fake received it."""

    filename: str
    content_type: str | None
    data: bytes
    id: int = field(default_factory=make_snowflake)
    description: str | None = None
    claimed_size: int | None = None  # the size the payload states, when a test wants it to differ from the data's

    @property
    def size(self) -> int:
        return len(self.data) if self.claimed_size is None else self.claimed_size

    def shown_content_type(self) -> str:
        """What Discord shows: the type of the file's extension, else what the upload said."""
        guessed, _ = mimetypes.guess_type(self.filename)
        return guessed or self.content_type or "application/octet-stream"

    def payload(self, attachments_base: str, channel_id: int, *, ephemeral: bool) -> dict[str, Any]:
        url = f"{attachments_base}/{channel_id}/{self.id}/{self.filename}"
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": url,
            "proxy_url": url,
            "content_type": self.shown_content_type(),
            "description": self.description,
        }
        if ephemeral:
            data["ephemeral"] = True
        return data


@dataclass
class FakeMessage:
    """A message the bot created (channel post, interaction response or follow-up)."""

    id: int
    channel_id: int
    author_id: int
    via: str  # "callback" | "webhook" | "channel"
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    allowed_mentions: dict[str, Any] | None = None
    attachments: list[FakeAttachment] = field(default_factory=list)
    interaction_id: int | None = None
    guild_id: int | None = None
    webhook_id: int | None = None
    message_type: int = DEFAULT_MESSAGE
    timestamp: str = field(default_factory=iso_now)
    edits: list[dict[str, Any]] = field(default_factory=list)
    edit_times: list[float] = field(default_factory=list)
    deleted: bool = False

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    def custom_ids(self) -> list[str]:
        """Every custom_id in the message's components, depth first."""
        found: list[str] = []
        _collect_custom_ids(self.components, found)
        return found

    def apply(self, body: dict[str, Any], new_files: list[FakeAttachment]) -> None:
        """Apply a create or edit body: fields present replace, ``attachments`` keeps the listed old files."""
        for key in ("content", "embeds", "components", "allowed_mentions"):
            if key in body:
                default: Any = "" if key == "content" else None if key == "allowed_mentions" else []
                setattr(self, key, body[key] if body[key] is not None else default)
        if "flags" in body and body["flags"] is not None:
            self.flags = (self.flags & EPHEMERAL) | int(body["flags"])
        if "attachments" in body:
            kept = {str(item.get("id")) for item in body["attachments"] or []}
            self.attachments = [old for old in self.attachments if str(old.id) in kept]
        _describe_uploads(body.get("attachments") or [], new_files)
        self.attachments.extend(new_files)

    def record_edit(self, body: dict[str, Any], new_files: list[FakeAttachment]) -> None:
        at = time.monotonic()
        self.apply(body, new_files)
        self.flags &= ~LOADING
        self.edits.append({**body, "at": at})
        self.edit_times.append(at)

    def payload(self, *, author: FakeUser, attachments_base: str,
                interaction: dict[str, Any] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "type": self.message_type,
            "author": author.payload(),
            "content": self.content,
            "timestamp": self.timestamp,
            "edited_timestamp": iso_now() if self.edits else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "mention_channels": [],
            "attachments": [
                item.payload(attachments_base, self.channel_id, ephemeral=self.ephemeral) for item in self.attachments
            ],
            "embeds": [{"type": "rich", **embed} for embed in self.embeds],
            "components": self.components,
            "pinned": False,
            "flags": self.flags,
        }
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(self.webhook_id)
        if interaction is not None:
            data["interaction_metadata"] = interaction
        return data


def _collect_custom_ids(components: list[dict[str, Any]], found: list[str]) -> None:
    for component in components:
        if "custom_id" in component:
            found.append(component["custom_id"])
        _collect_custom_ids(component.get("components") or [], found)
        if isinstance(component.get("accessory"), dict):
            _collect_custom_ids([component["accessory"]], found)


def _describe_uploads(entries: list[dict[str, Any]], new_files: list[FakeAttachment]) -> None:
    """Copy descriptions of new uploads (attachments entries whose id is the upload index)."""
    by_index = {str(entry.get("id")): entry for entry in entries}
    for index, upload in enumerate(new_files):
        entry = by_index.get(str(index))
        if entry and entry.get("description"):
            upload.description = entry["description"]


@dataclass
class CallbackRecord:
    """The bot's answer to an interaction: POST /interactions/{id}/{token}/callback."""

    type: int
    data: dict[str, Any] | None
    at: float


@dataclass
class FakeInteraction:
    """An interaction the fake dispatched, and what the bot did with it."""

    id: int
    token: str
    type: int
    user: FakeUser
    guild_id: int | None
    channel_id: int
    created_at: float
    attachment_size_limit: int
    payload: dict[str, Any] = field(repr=False)
    message: FakeMessage | None = None  # the message whose component was used (type 3)
    callback: CallbackRecord | None = None
    rejected_callbacks: list[CallbackRecord] = field(default_factory=list)
    original: FakeMessage | None = None
    followups: list[FakeMessage] = field(default_factory=list)
    ephemeral: bool = False
    token_expired: bool = False
    _waiter: Callable[[Callable[[], bool], float], Awaitable[None]] | None = field(default=None, repr=False)

    async def wait_callback(self, timeout: float = 5) -> CallbackRecord:
        """Wait until the bot answered this interaction."""
        if self._waiter is None:
            raise RuntimeError("interaction is not attached to a FakeDiscord")
        await self._waiter(lambda: self.callback is not None, timeout)
        assert self.callback is not None
        return self.callback

    @property
    def ack_latency(self) -> float | None:
        return None if self.callback is None else self.callback.at - self.created_at

    def token_valid(self, ttl: float) -> bool:
        return not self.token_expired and time.monotonic() - self.created_at < ttl

    def metadata(self) -> dict[str, Any]:
        """``interaction_metadata`` of the messages answering this interaction."""
        return {
            "id": str(self.id),
            "type": self.type,
            "user": self.user.payload(),
            "authorizing_integration_owners": self.payload.get("authorizing_integration_owners", {}),
        }


@dataclass
class RecordedRequest:
    """One HTTP request the bot made to the fake."""

    method: str
    path: str  # below /api/v10, without the query
    route: str  # "POST /webhooks/{application_id}/{token}"; "UNKNOWN" when no route matched
    query: dict[str, str]
    json: Any = None  # the JSON body, or the payload_json part of a multipart body
    files: list[FakeAttachment] = field(default_factory=list)
    at: float = field(default_factory=time.monotonic)
    status: int | None = None  # what the fake answered

    @property
    def payload(self) -> Any:
        return self.json

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status}"


def new_message(*, channel_id: int, author_id: int, via: str, **kwargs: Any) -> FakeMessage:
    return FakeMessage(id=make_snowflake(), channel_id=channel_id, author_id=author_id, via=via, **kwargs)
