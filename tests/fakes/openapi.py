"""Validate request bodies against Discord's official OpenAPI description.

The description (public repo discord/discord-api-spec, ``specs/openapi.json``, MIT) travels with the repository,
gzipped: ``tests/data/discord-openapi.json.gz`` (see ``tests/data/README.md``). ``$JAMGEN_DISCORD_OPENAPI`` points at
another copy (plain or gzipped JSON), to try a newer description. A missing description is an error, never a
reason to skip validation: the fake would drift from the real API unnoticed.

Snowflakes are typed as strings in the description; discord.py sends some of them as integers (attachment ids,
for example), and Discord accepts both, so every snowflake schema here accepts a string of digits or an integer.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

ENV_VAR = "JAMGEN_DISCORD_OPENAPI"
VENDORED = Path(__file__).resolve().parents[1] / "data" / "discord-openapi.json.gz"
_MAX_MESSAGE = 300


class MissingDescription(FileNotFoundError):
    """Discord's OpenAPI description is not where it should be: the tests cannot check requests against it."""


def default_spec_path() -> Path:
    """``$JAMGEN_DISCORD_OPENAPI``, else the copy in ``tests/data``."""
    override = os.environ.get(ENV_VAR)
    return Path(override) if override else VENDORED


def read_description(path: Path) -> dict[str, Any]:
    """The description at ``path`` (gzipped when it ends in ``.gz``); :class:`MissingDescription` when absent."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        hint = f"unset {ENV_VAR}" if os.environ.get(ENV_VAR) else f"restore tests/data/{VENDORED.name} from git"
        raise MissingDescription(
            f"Discord's OpenAPI description is missing at {path}; requests cannot be validated without it ({hint})"
        ) from None
    description: dict[str, Any] = json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    return description


@dataclass(frozen=True)
class BodyError:
    """One validation failure: where in the body, and what is wrong."""

    path: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        where = ".".join(str(part) for part in self.path) or "<body>"
        return f"{where}: {self.message}"


_loaded: dict[Path, OpenApiValidator] = {}


def _snowflake_schema(nullable: bool) -> dict[str, Any]:
    options: list[dict[str, Any]] = [
        {"type": "string", "pattern": r"^(0|[1-9][0-9]*)$"},
        {"type": "integer", "minimum": 0},
    ]
    if nullable:
        options.append({"type": "null"})
    return {"anyOf": options}


def _relax_snowflakes(node: Any) -> Any:
    """Return a copy of the description where every snowflake accepts strings and integers."""
    if isinstance(node, list):
        return [_relax_snowflakes(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("format") == "snowflake":
        kind = node.get("type")
        nullable = isinstance(kind, list) and "null" in kind
        return _snowflake_schema(nullable)
    return {key: _relax_snowflakes(value) for key, value in node.items()}


def _template_regex(template: str) -> re.Pattern[str]:
    parts = [re.escape(part) if not part.startswith("{") else "[^/]+" for part in re.split(r"(\{[^}]+\})", template)]
    return re.compile("^" + "".join(parts) + "$")


def _literal_weight(template: str) -> int:
    """How many characters of a path template are literal: the more, the more specific."""
    return len(re.sub(r"\{[^}]+\}", "", template))


class OpenApiValidator:
    """Finds the operation for a request and checks its JSON body (or multipart ``payload_json``)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._spec = _relax_snowflakes(spec)
        self._components = self._spec.get("components", {})
        templates = sorted(self._spec.get("paths", {}), key=_literal_weight, reverse=True)
        self._paths = [(template, _template_regex(template)) for template in templates]
        self._validators: dict[tuple[str, str], Draft202012Validator | None] = {}

    @classmethod
    def load(cls, path: Path | None = None) -> OpenApiValidator:
        """The validator for the description at ``path``; raises :class:`MissingDescription` when it is missing.

        Validators are shared per file: parsing the 1 MB description costs more than a test's requests.
        """
        path = (path or default_spec_path()).resolve()
        if path not in _loaded:
            _loaded[path] = cls(read_description(path))
        return _loaded[path]

    def operation_path(self, path: str) -> str | None:
        """The description's path template that matches a concrete path such as ``/channels/1/messages``."""
        for template, pattern in self._paths:
            if pattern.match(path):
                return template
        return None

    def validate(self, method: str, path: str, body: Any) -> list[BodyError]:
        """Errors in ``body`` for ``method path``; empty when valid or when the operation declares no body."""
        validator = self._validator(method.lower(), path)
        if validator is None:
            return []
        return [self._describe(error) for error in validator.iter_errors(body)]

    def validate_schema(self, name: str, body: Any) -> list[BodyError]:
        """Errors in ``body`` against one schema of the description's components (``UpdateThreadRequestPartial``),
        for a body whose operation takes a union loose enough to let anything through."""
        key = ("#schema", name)
        if key not in self._validators:
            self._validators[key] = Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                                          "components": self._components})
        validator = self._validators[key]
        assert validator is not None
        return [self._describe(error) for error in validator.iter_errors(body)]

    def _validator(self, method: str, path: str) -> Draft202012Validator | None:
        template = self.operation_path(path)
        if template is None:
            return None
        key = (method, template)
        if key not in self._validators:
            self._validators[key] = self._build_validator(method, template)
        return self._validators[key]

    def _build_validator(self, method: str, template: str) -> Draft202012Validator | None:
        operation = self._spec["paths"][template].get(method)
        if not isinstance(operation, dict):
            return None
        content = operation.get("requestBody", {}).get("content", {})
        media = content.get("application/json") or content.get("multipart/form-data")
        if not media or "schema" not in media:
            return None
        # "#/components/..." references resolve against the root schema, so the components ride along.
        schema = {**media["schema"], "components": self._components}
        return Draft202012Validator(schema)

    @staticmethod
    def _describe(error: ValidationError) -> BodyError:
        deepest = _deepest(error)
        message = deepest.message
        if len(message) > _MAX_MESSAGE:  # the message starts with the instance's repr: keep its verdict
            message = message[:80] + " … " + message[-150:]
        return BodyError(tuple(deepest.absolute_path), message)


def _deepest(error: ValidationError) -> ValidationError:
    """The most specific cause of an anyOf/oneOf failure: the one that got furthest into the body."""
    if not error.context:
        return error
    causes = [_deepest(cause) for cause in error.context]
    return max(causes, key=lambda cause: (len(cause.absolute_path), cause.validator not in ("type", "enum")))


# Limits Discord enforces on bots that the description leaves looser (it allows 4,000 characters of content,
# which only Nitro users get).
CONTENT_LIMIT = 2000
EMBED_LIMITS = {"title": 256, "description": 4096}
FIELD_LIMITS = {"name": 256, "value": 1024}
MAX_FIELDS = 25
EMBEDS_TOTAL = 6000


def message_limit_errors(message: dict[str, Any]) -> list[BodyError]:
    """Errors in a message body (create or edit) against Discord's limits for bots."""
    errors: list[BodyError] = []
    content = message.get("content")
    if isinstance(content, str) and len(content) > CONTENT_LIMIT:
        errors.append(BodyError(("content",), f"Must be {CONTENT_LIMIT} or fewer in length (got {len(content)})."))
    total = 0
    for index, embed in enumerate(message.get("embeds") or []):
        total += _embed_errors(index, embed, errors)
    if total > EMBEDS_TOTAL:
        errors.append(BodyError(("embeds",), f"Embed size exceeds maximum size of {EMBEDS_TOTAL} (got {total})."))
    return errors


def _embed_errors(index: int, embed: dict[str, Any], errors: list[BodyError]) -> int:
    """Append the errors of one embed; return how many characters it counts toward the 6,000 total."""
    size = 0
    for key, limit in EMBED_LIMITS.items():
        text = embed.get(key) or ""
        size += len(text)
        if len(text) > limit:
            errors.append(BodyError(("embeds", index, key), f"Must be {limit} or fewer in length."))
    fields = embed.get("fields") or []
    if len(fields) > MAX_FIELDS:
        errors.append(BodyError(("embeds", index, "fields"), f"Must be {MAX_FIELDS} or fewer in length."))
    for number, field in enumerate(fields):
        for key, limit in FIELD_LIMITS.items():
            text = field.get(key) or ""
            size += len(text)
            if len(text) > limit:
                where = ("embeds", index, "fields", number, key)
                errors.append(BodyError(where, f"Must be {limit} or fewer in length."))
    size += len((embed.get("footer") or {}).get("text") or "") + len((embed.get("author") or {}).get("name") or "")
    return size


def discord_error_body(errors: list[BodyError]) -> dict[str, Any]:
    """The 400 body Discord answers for an invalid form: nested ``errors`` with ``_errors`` leaves."""
    tree: dict[str, Any] = {}
    for error in errors:
        node = tree
        for part in error.path:
            node = node.setdefault(str(part), {})
        node.setdefault("_errors", []).append({"code": "BASE_TYPE_INVALID", "message": error.message})
    return {"code": 50035, "message": "Invalid Form Body", "errors": tree}
