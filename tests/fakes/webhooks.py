"""Interaction routes of the fake Discord: the callback and the application's webhook (follow-ups, @original)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tests.fakes.interactions import APPLICATION_COMMAND, AUTOCOMPLETE, CHAT_INPUT, MODAL_SUBMIT
from tests.fakes.messages import (
    CHAT_INPUT_COMMAND,
    CONTEXT_MENU_COMMAND,
    DEFAULT_MESSAGE,
    EPHEMERAL,
    LOADING,
    CallbackRecord,
    FakeInteraction,
    FakeMessage,
    new_message,
)
from tests.fakes.rest import UNKNOWN_MESSAGE, ApiError, Call, Reply, RouteSpec, check_uploads, route, unknown

if TYPE_CHECKING:
    from tests.fakes.discord import FakeDiscord

PONG, CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE = 1, 4, 5, 6, 7
AUTOCOMPLETE_RESULT, MODAL = 8, 9
CALLBACK_TYPES = {PONG, CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE,
                  AUTOCOMPLETE_RESULT, MODAL}

UNKNOWN_WEBHOOK, UNKNOWN_INTERACTION, ALREADY_ACKNOWLEDGED, INVALID_WEBHOOK_TOKEN = 10015, 10062, 40060, 50027


# Callback -----------------------------------------------------------------------------------------------------


async def interaction_callback(fake: FakeDiscord, call: Call) -> Reply:
    interaction = fake.interactions.get(call.int_param("interaction_id"))
    if interaction is None or interaction.token != call.params["token"]:
        raise ApiError(404, UNKNOWN_INTERACTION, "Unknown interaction")
    body = call.body or {}
    record = CallbackRecord(type=int(body.get("type", 0)), data=body.get("data"), at=time.monotonic())
    _accept_callback(fake, interaction, record)
    check_uploads(call.files, interaction.attachment_size_limit)
    interaction.callback = record
    interaction.ephemeral = bool((record.data or {}).get("flags", 0) & EPHEMERAL)
    message = await _apply_callback(fake, interaction, record, call)
    if call.query.get("with_response", "").lower() not in ("1", "true"):
        return Reply(status=204)
    return Reply(body=_callback_response(fake, interaction, record, message))


def _accept_callback(fake: FakeDiscord, interaction: FakeInteraction, record: CallbackRecord) -> None:
    """Refuse a second callback (40060), a late one (10062) and unknown callback types."""
    if record.type not in CALLBACK_TYPES:
        raise ApiError(400, 50035, "Invalid Form Body", errors={"type": {"_errors": [
            {"code": "BASE_TYPE_CHOICES", "message": f"Value must be one of {sorted(CALLBACK_TYPES)}."}]}})
    if interaction.callback is not None:
        interaction.rejected_callbacks.append(record)
        raise ApiError(400, ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged.")
    if record.at - interaction.created_at > fake.interaction_deadline:
        interaction.rejected_callbacks.append(record)
        raise ApiError(404, UNKNOWN_INTERACTION, "Unknown interaction")
    if record.type in (DEFERRED_UPDATE, UPDATE_MESSAGE) and interaction.message is None:
        raise ApiError(400, 40004, "Interaction callback type is only valid for component interactions")
    if record.type == MODAL and interaction.type in (MODAL_SUBMIT, AUTOCOMPLETE):
        raise ApiError(400, 40004, "A modal cannot answer a modal submission or an autocomplete request")


async def _apply_callback(fake: FakeDiscord, interaction: FakeInteraction, record: CallbackRecord,
                          call: Call) -> FakeMessage | None:
    data = record.data or {}
    if record.type in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
        message = _interaction_message(fake, interaction, via="callback")
        if record.type == CHANNEL_MESSAGE:
            message.apply(data, call.files)
        else:  # "<bot> is thinking…" until the bot edits @original
            message.flags = LOADING | (data.get("flags", 0) & EPHEMERAL)
        interaction.original = message
        await fake.add_message(message)
        return message
    if record.type in (DEFERRED_UPDATE, UPDATE_MESSAGE):
        interaction.original = interaction.message
        if record.type == UPDATE_MESSAGE and interaction.message is not None:
            await fake.edit_message(interaction.message, data, call.files)
        return interaction.message
    return None


def _interaction_message(fake: FakeDiscord, interaction: FakeInteraction, *, via: str) -> FakeMessage:
    kind = DEFAULT_MESSAGE
    if interaction.type == APPLICATION_COMMAND:
        chat_input = interaction.payload["data"].get("type", CHAT_INPUT) == CHAT_INPUT
        kind = CHAT_INPUT_COMMAND if chat_input else CONTEXT_MENU_COMMAND
    return new_message(channel_id=interaction.channel_id, author_id=fake.bot_user.id, via=via,
                       interaction_id=interaction.id, guild_id=interaction.guild_id,
                       webhook_id=fake.application_id, message_type=kind)


def _callback_response(fake: FakeDiscord, interaction: FakeInteraction, record: CallbackRecord,
                       message: FakeMessage | None) -> dict[str, Any]:
    """The ``?with_response=true`` body: the interaction's summary and the resource it produced."""
    resource: dict[str, Any] = {"type": record.type}
    if message is not None and record.type in (CHANNEL_MESSAGE, UPDATE_MESSAGE):
        resource["message"] = fake.message_payload(message)
    return {
        "interaction": {
            "id": str(interaction.id),
            "type": interaction.type,
            "activity_instance_id": None,
            "response_message_id": str(message.id) if message is not None else None,
            "response_message_loading": record.type == DEFERRED_CHANNEL_MESSAGE,
            "response_message_ephemeral": interaction.ephemeral,
        },
        "resource": resource,
    }


# Webhook (follow-ups and @original) ---------------------------------------------------------------------------


def _webhook_interaction(fake: FakeDiscord, call: Call) -> FakeInteraction:
    """The interaction a webhook token belongs to: 404 when unknown, 401 when the token expired."""
    interaction = fake.interaction_by_token(call.params["token"])
    if interaction is None or call.int_param("application_id") != fake.application_id:
        raise unknown("Webhook", UNKNOWN_WEBHOOK)
    if not interaction.token_valid(fake.token_ttl):
        raise ApiError(401, INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")
    if interaction.callback is None:
        raise unknown("Webhook", UNKNOWN_WEBHOOK)
    return interaction


def _webhook_message(fake: FakeDiscord, call: Call) -> tuple[FakeInteraction, FakeMessage]:
    interaction = _webhook_interaction(fake, call)
    message_id = call.params.get("message_id", "@original")
    if message_id == "@original":
        message = interaction.original
    else:
        candidates = [interaction.original, *interaction.followups]
        message = next((item for item in candidates if item is not None and item.id == int(message_id)), None)
    if message is None or message.deleted:
        raise unknown("Message", UNKNOWN_MESSAGE)
    return interaction, message


async def post_followup(fake: FakeDiscord, call: Call) -> Reply:
    interaction = _webhook_interaction(fake, call)
    check_uploads(call.files, interaction.attachment_size_limit)
    message = _interaction_message(fake, interaction, via="webhook")
    message.apply(call.body or {}, call.files)
    interaction.followups.append(message)
    await fake.add_message(message)
    if call.query.get("wait", "").lower() not in ("1", "true"):
        return Reply(status=204)
    return Reply(body=fake.message_payload(message))


async def get_webhook_message(fake: FakeDiscord, call: Call) -> Reply:
    return Reply(body=fake.message_payload(_webhook_message(fake, call)[1]))


async def edit_webhook_message(fake: FakeDiscord, call: Call) -> Reply:
    interaction, message = _webhook_message(fake, call)
    check_uploads(call.files, interaction.attachment_size_limit)
    await fake.edit_message(message, call.body or {}, call.files)
    return Reply(body=fake.message_payload(message))


async def delete_webhook_message(fake: FakeDiscord, call: Call) -> Reply:
    await fake.delete_message(_webhook_message(fake, call)[1])
    return Reply(status=204)


def webhook_routes() -> list[RouteSpec]:
    original = "/webhooks/{application_id}/{token}/messages/@original"
    by_id = "/webhooks/{application_id}/{token}/messages/{message_id}"
    return [
        route("POST", "/interactions/{interaction_id}/{token}/callback", interaction_callback),
        route("POST", "/webhooks/{application_id}/{token}", post_followup),
        route("GET", original, get_webhook_message),
        route("PATCH", original, edit_webhook_message),
        route("DELETE", original, delete_webhook_message),
        route("GET", by_id, get_webhook_message),
        route("PATCH", by_id, edit_webhook_message),
        route("DELETE", by_id, delete_webhook_message),
    ]
