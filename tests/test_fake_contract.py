"""The fake keeps to Discord's API: the OpenAPI description travels with the repository and is required, request
bodies are checked against it, and a bot test fails when the bot calls a route the fake does not serve."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest
from discord.http import Route

from tests.bot_harness import World, fake_world, make_world
from tests.fakes.discord import FakeDiscord, connected
from tests.fakes.openapi import ENV_VAR, MissingDescription, OpenApiValidator, default_spec_path

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[1]
MESSAGES = "/channels/{channel_id}/messages"


@pytest.fixture
async def world() -> AsyncIterator[World]:
    """Like conftest's, without its end-of-test check: these tests send what Discord refuses on purpose."""
    async with FakeDiscord() as fake:
        yield make_world(fake)


def client() -> discord.Client:
    return discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.1)


def test_the_description_in_the_repository_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert default_spec_path() == REPO / "tests/data/discord-openapi.json.gz"
    validator = OpenApiValidator.load()
    assert validator.operation_path("/channels/1/messages") == MESSAGES
    assert FakeDiscord().rest.validator is validator


def test_a_missing_description_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "discord-openapi.json.gz"
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(MissingDescription, match=f"missing at {missing}.*unset {ENV_VAR}"):
        OpenApiValidator.load()
    with pytest.raises(MissingDescription):
        FakeDiscord()


@pytest.mark.parametrize("name", ["spec.json", "spec.json.gz"])
def test_another_description_can_be_given_plain_or_gzipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    body = {"type": "object", "properties": {"content": {"type": "string"}}}
    operation = {"requestBody": {"content": {"application/json": {"schema": body}}}}
    raw = json.dumps({"paths": {MESSAGES: {"post": operation}}}).encode()
    (tmp_path / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / name))
    validator = OpenApiValidator.load()
    assert validator.validate("POST", "/channels/1/messages", {"content": "ok"}) == []
    assert [str(error) for error in validator.validate("POST", "/channels/1/messages", {"content": 5})] == [
        "content: 5 is not of type 'string'"
    ]


async def test_invalid_bodies_are_refused_and_collected(world: World) -> None:
    bot = client()
    async with connected(world.fake, bot):
        # Route reads Route.BASE when it is built: build it while discord.py points at the fake.
        route = Route("POST", MESSAGES, channel_id=world.jam.id)
        with pytest.raises(discord.HTTPException) as too_long:
            await bot.http.request(route, json={"content": "x" * 2500})
        with pytest.raises(discord.HTTPException) as wrong_type:  # only the OpenAPI description knows this one
            await bot.http.request(route, json={"content": "ok", "tts": "yes"})
        channel = bot.get_channel(world.jam.id)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.HTTPException) as multipart:  # payload_json of a multipart body
            await channel.send("y" * 2001, file=discord.File(io.BytesIO(b"RIFF"), "a.wav"))
    assert (too_long.value.status, too_long.value.code) == (400, 50035)
    assert wrong_type.value.status == multipart.value.status == 400
    assert len(world.fake.validation_errors) == 3
    assert world.fake.validation_errors[0].startswith(f"POST {MESSAGES}: content:")
    assert "tts" in world.fake.validation_errors[1]
    assert "content" in world.fake.validation_errors[2]
    assert world.fake.messages == []


async def test_a_route_the_fake_does_not_serve_fails_the_bot_tests_check() -> None:
    with pytest.raises(AssertionError, match=r"does not serve: \['GET /channels/\d+/jams', 'POST /oauth2/token'\]"):
        async with fake_world() as world:
            bot = client()
            async with connected(world.fake, bot):
                with pytest.raises(discord.NotFound):
                    await bot.http.request(Route("GET", "/channels/{channel_id}/jams", channel_id=world.jam.id))
                outside = Route("POST", "/token")  # outside /api/v10
                outside.url = world.fake.base_url.removesuffix("/api/v10") + "/oauth2/token"
                with pytest.raises(discord.NotFound):
                    await bot.http.request(outside)
            assert [request.route for request in world.fake.requests[-2:]] == ["UNKNOWN", "UNKNOWN"]


async def test_a_bot_test_that_keeps_to_the_api_passes_the_check() -> None:
    async with fake_world() as world:
        bot = client()
        async with connected(world.fake, bot):
            channel = await bot.fetch_channel(world.jam.id)
            assert isinstance(channel, discord.TextChannel)
            await channel.send("hello")
        assert world.fake.unknown_routes == [] and world.fake.validation_errors == []
        assert [message.content for message in world.fake.messages] == ["hello"]


async def test_a_body_discord_refuses_fails_the_bot_tests_check() -> None:
    with pytest.raises(AssertionError, match=r"description refuses: \[.POST /channels/\{channel_id\}/messages: tts"):
        async with fake_world() as world:
            bot = client()
            async with connected(world.fake, bot):
                with pytest.raises(discord.HTTPException):
                    await bot.http.request(Route("POST", MESSAGES, channel_id=world.jam.id), json={"tts": "yes"})


async def test_thread_bodies_are_checked_against_the_description(world: World) -> None:
    bot = client()
    async with connected(world.fake, bot):
        start = Route("POST", "/channels/{channel_id}/threads", channel_id=world.jam.id)
        with pytest.raises(discord.HTTPException) as nameless:
            await bot.http.request(start, json={"name": "", "type": 11})
        with pytest.raises(discord.HTTPException) as odd_duration:
            await bot.http.request(start, json={"name": "jam", "type": 11, "auto_archive_duration": 5})
        thread = await bot.http.request(start, json={"name": "jam", "type": 11, "auto_archive_duration": 60})
        edit = Route("PATCH", "/channels/{channel_id}", channel_id=int(thread["id"]))
        with pytest.raises(discord.HTTPException) as not_a_flag:
            await bot.http.request(edit, json={"archived": "yes"})
    assert nameless.value.status == odd_duration.value.status == not_a_flag.value.status == 400
    assert [error.split(":")[0] for error in world.fake.validation_errors] == [
        "POST /channels/{channel_id}/threads", "POST /channels/{channel_id}/threads", "PATCH /channels/{channel_id}"]
    assert (thread["type"], thread["parent_id"], thread["thread_metadata"]["auto_archive_duration"]) == (
        11, str(world.jam.id), 60)
    [made] = world.fake.guilds[int(thread["guild_id"])].threads_of(world.jam.id)
    assert (made.archived, made.auto_archive_duration) == (False, 60)
