"""INTERACTION_CREATE payloads as Discord sends them: options, resolved objects, members, channels."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.messages import FakeAttachment
from tests.fakes.models import FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser, make_snowflake

# Interaction types.
APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 2, 3, 4, 5
# Application command types.
CHAT_INPUT, USER_COMMAND, MESSAGE_COMMAND = 1, 2, 3
# Option types.
SUB_COMMAND, SUB_COMMAND_GROUP, STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, NUMBER = 1, 2, 3, 4, 5, 6, 7, 8, 10
ATTACHMENT = 11
# Component types (in a modal).
ACTION_ROW, TEXT_INPUT, LABEL = 1, 4, 18
# Interaction contexts.
GUILD_CONTEXT, BOT_DM_CONTEXT = 0, 1


def infer_option_type(value: object) -> int:
    """The option type Discord would use for a Python value (when the bot registered no definition)."""
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, (FakeUser, FakeMember)):
        return USER
    if isinstance(value, FakeChannel):
        return CHANNEL
    if isinstance(value, FakeRole):
        return ROLE
    if isinstance(value, FakeAttachment):
        return ATTACHMENT
    return STRING


def find_command(commands: Mapping[Any, list[dict[str, Any]]], name: str, guild: FakeGuild | None,
                 kind: int = CHAT_INPUT) -> tuple[dict[str, Any] | None, bool]:
    """The registered definition of a command of ``kind`` (chat input, user or message), and whether it is a guild
    command."""
    if guild is not None:
        for command in commands.get(guild.id, []):
            if command["name"] == name and command.get("type", 1) == kind:
                return command, True
    for command in commands.get("global", []):
        if command["name"] == name and command.get("type", 1) == kind:
            return command, False
    return None, False


def option_definitions(command: dict[str, Any] | None, subcommands: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The declared options (by name) of a command, below the given subcommand group/subcommand."""
    if command is None:
        return {}
    options = command.get("options") or []
    for name in subcommands:
        parent = next((option for option in options if option["name"] == name), None)
        options = (parent or {}).get("options") or []
    return {option["name"]: option for option in options if option.get("type") not in (SUB_COMMAND, SUB_COMMAND_GROUP)}


def nest_options(options: list[dict[str, Any]], subcommands: tuple[str, ...]) -> list[dict[str, Any]]:
    """Wrap leaf options the way Discord does: a group (type 2) holds a subcommand (type 1)."""
    if not subcommands:
        return options
    *groups, leaf = subcommands
    nested = [{"name": leaf, "type": SUB_COMMAND, "options": options}]
    for group in reversed(groups):
        nested = [{"name": group, "type": SUB_COMMAND_GROUP, "options": nested}]
    return nested


@dataclass
class Resolver:
    """Turns option values into Discord's ``value`` and collects ``data.resolved``.

    ``attachment``: an uploaded file's payload (its URL on the fake's CDN), for ATTACHMENT options.
    """

    guild: FakeGuild | None
    users: Mapping[int, FakeUser]
    attachment: Callable[[FakeAttachment], dict[str, Any]] | None = None
    resolved: dict[str, dict[str, Any]] = field(default_factory=dict)

    def option(self, name: str, value: object, declared: dict[str, Any] | None) -> dict[str, Any]:
        kind = declared["type"] if declared else infer_option_type(value)
        return {"name": name, "type": kind, "value": self._value(kind, value)}

    def _value(self, kind: int, value: object) -> object:
        if kind == USER:
            return self._user(value)
        if kind == CHANNEL:
            return self._channel(value)
        if kind == ROLE:
            return self._role(value)
        if kind == ATTACHMENT and isinstance(value, FakeAttachment) and self.attachment is not None:
            self.resolved.setdefault("attachments", {})[str(value.id)] = self.attachment(value)
            return str(value.id)
        if kind == NUMBER and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    def _user(self, value: object) -> str:
        user = value.user if isinstance(value, FakeMember) else value
        if not isinstance(user, FakeUser):
            user = self.users[int(str(value))]
        self.resolved.setdefault("users", {})[str(user.id)] = user.payload()
        member = self.guild.member(user.id) if self.guild else None
        if member is not None and self.guild is not None:
            permissions = self.guild.permissions_of(member)
            self.resolved.setdefault("members", {})[str(user.id)] = member.payload(with_user=False,
                                                                                   permissions=permissions)
        return str(user.id)

    def _channel(self, value: object) -> str:
        channel = value if isinstance(value, FakeChannel) else self.guild and self.guild.channel(int(str(value)))
        if not isinstance(channel, FakeChannel):
            return str(value)
        permissions = self.guild.bot_permissions if self.guild else 0
        self.resolved.setdefault("channels", {})[str(channel.id)] = {**channel.payload(),
                                                                    "permissions": str(permissions)}
        return str(channel.id)

    def _role(self, value: object) -> str:
        role = value if isinstance(value, FakeRole) else self.guild and self.guild.role(int(str(value)))
        if not isinstance(role, FakeRole):
            return str(value)
        self.resolved.setdefault("roles", {})[str(role.id)] = role.payload()
        return str(role.id)


@dataclass
class Invoker:
    """Who uses an interaction, and where."""

    user: FakeUser
    guild: FakeGuild | None
    channel_id: int
    permissions: int | None = None
    attachment_size_limit: int = 10 * 1024 * 1024


def interaction_payload(*, application_id: int, kind: int, data: dict[str, Any], invoker: Invoker,
                        message: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete INTERACTION_CREATE ``d``; the id is a fresh snowflake, so discord.py's expiry is right."""
    payload: dict[str, Any] = {
        "id": str(make_snowflake()),
        "application_id": str(application_id),
        "type": kind,
        "token": "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48),
        "version": 1,
        "data": data,
        "channel_id": str(invoker.channel_id),
        "locale": "en-US",
        "entitlements": [],
        "entitlement_sku_ids": [],
        "attachment_size_limit": invoker.attachment_size_limit,
    }
    if invoker.guild is None:
        payload.update(_dm_fields(invoker))
    else:
        payload.update(_guild_fields(invoker, invoker.guild))
    if message is not None:
        payload["message"] = message
    return payload


def _guild_fields(invoker: Invoker, guild: FakeGuild) -> dict[str, Any]:
    member = guild.member(invoker.user.id)
    if member is None:
        raise ValueError(f"{invoker.user.name} is not a member of {guild.name}; call guild.add_member first")
    permissions = guild.permissions_of(member) if invoker.permissions is None else invoker.permissions
    channel = guild.channel(invoker.channel_id)
    channel_payload = channel.payload() if channel else {"id": str(invoker.channel_id), "type": 0,
                                                         "guild_id": str(guild.id)}
    return {
        "guild_id": str(guild.id),
        "guild": {"id": str(guild.id), "locale": guild.locale, "features": []},
        "guild_locale": guild.locale,
        "channel": {**channel_payload, "permissions": str(permissions)},
        "member": member.payload(permissions=permissions),
        "app_permissions": str(guild.bot_permissions),
        "authorizing_integration_owners": {"0": str(guild.id)},
        "context": GUILD_CONTEXT,
    }


def _dm_fields(invoker: Invoker) -> dict[str, Any]:
    return {
        "user": invoker.user.payload(),
        "channel": {
            "id": str(invoker.channel_id),
            "type": 1,
            "last_message_id": None,
            "flags": 0,
            "recipients": [invoker.user.payload()],
        },
        "app_permissions": str(invoker.permissions if invoker.permissions is not None else 0),
        "authorizing_integration_owners": {"0": "0"},
        "context": BOT_DM_CONTEXT,
    }


def command_data(*, name: str, command: dict[str, Any] | None, guild_command: bool, guild: FakeGuild | None,
                 options: list[dict[str, Any]], resolved: dict[str, Any]) -> dict[str, Any]:
    """``data`` of an application-command (or autocomplete) interaction."""
    data: dict[str, Any] = {
        "id": str(command["id"]) if command else str(make_snowflake()),
        "name": name,
        "type": 1,
        "options": options,
    }
    if guild_command and guild is not None:
        data["guild_id"] = str(guild.id)
    if resolved:
        data["resolved"] = resolved
    return data


def context_menu_data(*, command: dict[str, Any] | None, name: str, kind: int, guild_command: bool,
                      guild: FakeGuild | None, target_id: int, resolved: dict[str, Any]) -> dict[str, Any]:
    """``data`` of a user (type 2) or message (type 3) context-menu command: its target and the resolved target."""
    data: dict[str, Any] = {
        "id": str(command["id"]) if command else str(make_snowflake()),
        "name": name,
        "type": kind,
        "target_id": str(target_id),
        "resolved": resolved,
    }
    if guild_command and guild is not None:
        data["guild_id"] = str(guild.id)
    return data


def modal_submit_data(modal: dict[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """``data`` of a modal's submission: each text input of ``modal`` (the MODAL callback's data) with its value.

    Inputs left out of ``values`` are sent empty; a value for an input the modal lacks is a test's mistake.
    """
    inputs = [component for component in _leaves(modal.get("components") or []) if component["type"] == TEXT_INPUT]
    unknown = set(values) - {component["custom_id"] for component in inputs}
    if unknown:
        raise ValueError(f"the modal has no text input {sorted(unknown)}; it has {[c['custom_id'] for c in inputs]}")
    rows = []
    for row in modal.get("components") or []:
        if row["type"] == LABEL:
            inner = row["component"]
            rows.append({"type": LABEL, "component": _submitted(inner, values)})
        else:
            rows.append({"type": ACTION_ROW, "components": [_submitted(item, values) for item in row["components"]]})
    return {"custom_id": modal["custom_id"], "components": rows}


def _leaves(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for component in components:
        if "component" in component:
            found.append(component["component"])
        found.extend(component.get("components") or [])
    return found


def _submitted(component: dict[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    return {"type": component["type"], "custom_id": component["custom_id"],
            "value": values.get(component["custom_id"], "")}
