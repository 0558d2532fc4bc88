"""The REST front door of the fake Discord: match the route, record the request, inject faults, validate the
body, call the handler, and write the answer the way discord.py needs it."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from tests.fakes.messages import FakeAttachment, RecordedRequest
from tests.fakes.openapi import BodyError, OpenApiValidator, discord_error_body, message_limit_errors
from tests.fakes.rest import ApiError, Call, Reply, RouteSpec

if TYPE_CHECKING:
    from tests.fakes.discord import FakeDiscord

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
NOT_FOUND = {"code": 0, "message": "404: Not Found"}
# Routes whose whole body is a message (create or edit); the callback's ``data`` is one for types 4 and 7.
MESSAGE_ROUTES = {
    "POST /channels/{channel_id}/messages",
    "PATCH /channels/{channel_id}/messages/{message_id}",
    "POST /webhooks/{application_id}/{token}",
    "PATCH /webhooks/{application_id}/{token}/messages/@original",
    "PATCH /webhooks/{application_id}/{token}/messages/{message_id}",
}
CALLBACK_ROUTE = "POST /interactions/{interaction_id}/{token}/callback"


@dataclass(frozen=True)
class Fault:
    """An injected error answer; ``after_effect``: the request is carried out first, then answered with it."""

    status: int
    retry_after: float
    after_effect: bool = False


class RestFrontDoor:
    """Serves ``/api/v10/...`` for a :class:`FakeDiscord`; records every request in ``fake.requests``."""

    def __init__(self, fake: FakeDiscord, routes: list[RouteSpec], validator: OpenApiValidator | None, *,
                 validate: bool) -> None:
        self._fake = fake
        self._routes = routes
        self.validator = validator
        self._validate_bodies = validate
        self._failures: dict[str, list[Fault]] = {}

    def fail_next(self, route: str, status: int, times: int, retry_after: float, *, after_effect: bool) -> None:
        names = sorted(spec.name for spec in self._routes)
        if route not in names:
            raise ValueError(f"unknown route {route!r}; known: {names}")
        self._failures.setdefault(route, []).extend([Fault(status, retry_after, after_effect)] * times)

    async def handle(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        spec = self._match(request.method, path)
        record = RecordedRequest(request.method, path, spec.name if spec else "UNKNOWN", dict(request.query))
        self._fake.requests.append(record)
        if spec is None:
            self._record_unknown(record)
        try:
            record.json, record.files = await read_body(request)
            reply = await self._answer(spec, record)
        except ApiError as error:
            reply = Reply(status=error.status, body=error.body)
        record.status = reply.status
        self._fake.notify()
        return to_response(reply)

    async def handle_outside_api(self, request: web.Request) -> web.Response:
        record = RecordedRequest(request.method, request.path, "UNKNOWN", dict(request.query), status=404)
        self._fake.requests.append(record)
        self._record_unknown(record)
        self._fake.notify()
        return to_response(Reply(status=404, body=NOT_FOUND))

    def _record_unknown(self, record: RecordedRequest) -> None:
        """A request no served route matches (answered 404, like Discord): kept for the test to fail on."""
        log.warning("fake Discord: unknown route %s %s", record.method, record.path)
        self._fake.unknown_routes.append(f"{record.method} {record.path}")

    async def serve_attachment(self, request: web.Request) -> web.Response:
        """The CDN: GET /attachments/{channel_id}/{attachment_id}/{filename} (discord.Attachment.read())."""
        attachment_id = int(request.match_info["attachment_id"])
        attachment = self._fake.attachment(attachment_id)
        if attachment is None:
            return web.Response(status=404)
        self._fake.downloads.append(attachment_id)
        self._fake.notify()
        return web.Response(body=attachment.data, content_type=attachment.shown_content_type())

    def _match(self, method: str, path: str) -> RouteSpec | None:
        return next((spec for spec in self._routes if spec.method == method and spec.pattern.match(path)), None)

    async def _answer(self, spec: RouteSpec | None, record: RecordedRequest) -> Reply:
        if spec is None:
            return Reply(status=404, body=NOT_FOUND)
        failures = self._failures.get(spec.name)
        fault = failures.pop(0) if failures else None
        if fault is not None and not fault.after_effect:
            return failure_reply(fault.status, fault.retry_after)
        errors = self._validate(spec, record)
        if errors:
            self._fake.validation_errors.extend(f"{spec.name}: {error}" for error in errors)
            return Reply(status=400, body=discord_error_body(errors))
        match = spec.pattern.match(record.path)
        assert match is not None
        call = Call(match.groupdict(), record.query, record.json, record.files, record)
        reply = await spec.handler(self._fake, call)
        if fault is not None:  # it took effect; only the answer is lost
            log.info("fake Discord: %s took effect, answering %s", spec.name, fault.status)
            return failure_reply(fault.status, fault.retry_after)
        return reply

    def _validate(self, spec: RouteSpec, record: RecordedRequest) -> list[BodyError]:
        """OpenAPI errors of the body, plus Discord's limits on bots' messages."""
        body = record.json
        if not self._validate_bodies or body is None:
            return []
        errors = self.validator.validate(record.method, record.path, body) if self.validator else []
        if spec.name in MESSAGE_ROUTES and isinstance(body, dict):
            errors += message_limit_errors(body)
        elif spec.name == CALLBACK_ROUTE and isinstance(body, dict) and body.get("type") in (4, 7):
            errors += [BodyError(("data", *error.path), error.message)
                       for error in message_limit_errors(body.get("data") or {})]
        return errors


async def read_body(request: web.Request) -> tuple[Any, list[FakeAttachment]]:
    """The JSON body, or the ``payload_json`` and ``files[n]`` parts of a multipart body."""
    if request.content_type == "multipart/form-data":
        return await read_multipart(request)
    text = await request.text()
    if not text:
        return None, []
    try:
        return json.loads(text), []
    except json.JSONDecodeError:
        raise ApiError(400, 50109, "The request body contains invalid JSON.") from None


async def read_multipart(request: web.Request) -> tuple[Any, list[FakeAttachment]]:
    payload: Any = None
    files: list[tuple[int, FakeAttachment]] = []
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        name = part.name or ""
        if name == "payload_json":
            payload = json.loads(await part.text())
        elif name.startswith("files[") and name.endswith("]"):
            data = bytes(await part.read(decode=False))
            upload = FakeAttachment(part.filename or name, part.headers.get("Content-Type"), data)
            files.append((int(name[6:-1]), upload))
        else:
            log.warning("fake Discord: unexpected multipart part %r", name)
    return payload, [upload for _, upload in sorted(files, key=lambda item: item[0])]


def failure_reply(status: int, retry_after: float) -> Reply:
    if status == 429:
        headers = {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": "fakebucket0000",
            "X-RateLimit-Scope": "user",
            "Retry-After": str(max(1, round(retry_after))),
            "Via": "1.1 google",
        }
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
        return Reply(status=429, body=body, headers=headers)
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return Reply(status=status, body={"code": 0, "message": f"{status}: {reason}"})


def to_response(reply: Reply) -> web.Response:
    """JSON with ``Content-Type: application/json`` exactly (discord.py reads anything else as text)."""
    if reply.body is None:
        return web.Response(status=reply.status, headers=reply.headers)
    headers = {**reply.headers, "Content-Type": "application/json"}
    return web.Response(status=reply.status, body=json.dumps(reply.body).encode(), headers=headers)
