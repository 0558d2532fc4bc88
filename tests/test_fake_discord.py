"""The fake Discord, driven by the real discord.py client (nothing inside discord.py is mocked)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fakes.discord import (
    FakeAttachment,
    FakeChannel,
    FakeDiscord,
    FakeGuild,
    FakeInteraction,
    FakeUser,
    connected,
)
from tests.fakes.models import ADMINISTRATOR

pytestmark = pytest.mark.timeout(30)

AUDIO = bytes(range(256)) * 64  # 16 KiB that a broken multipart parser would not reproduce


@dataclass
class World:
    fake: FakeDiscord
    guild: FakeGuild
    channel: FakeChannel
    alice: FakeUser
    bob: FakeUser


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


@pytest.fixture
def world(fake: FakeDiscord) -> World:
    guild = fake.add_guild("jam server")
    channel = guild.add_channel("jams")
    dj = guild.add_role("DJ", permissions=ADMINISTRATOR)
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    guild.add_member(alice)
    guild.add_member(bob, roles=[dj])
    return World(fake, guild, channel, alice, bob)


def make_bot(**options: Any) -> commands.Bot:
    intents = discord.Intents.default()
    intents.members = True
    return commands.Bot(command_prefix="!", intents=intents, guild_ready_timeout=0.1, **options)


def outcome() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


async def settled(future: asyncio.Future[Any], timeout: float = 5) -> Any:
    """What the bot reported; await it while the client still runs."""
    return await asyncio.wait_for(future, timeout)


async def test_login_and_ready_populate_the_guild_cache(world: World) -> None:
    client = discord.Client(intents=make_bot().intents, guild_ready_timeout=0.1)
    async with connected(world.fake, client):
        assert client.user is not None
        assert client.user.id == world.fake.bot_user_id
        guild = client.get_guild(world.guild.id)
        assert guild is not None
        assert guild.name == "jam server"
        assert [channel.name for channel in guild.text_channels] == ["jams"]
        assert {role.name for role in guild.roles} == {"@everyone", "DJ"}
        assert guild.default_role.id == guild.id
        assert guild.me is not None
        assert guild.get_member(world.bob.id).guild_permissions.administrator  # type: ignore[union-attr]
        assert not guild.get_member(world.alice.id).guild_permissions.administrator  # type: ignore[union-attr]
    routes = [request.route for request in world.fake.requests]
    assert "GET /users/@me" in routes
    assert "UNKNOWN" not in routes
    assert world.fake.validation_errors == []


async def test_rest_reads_edits_and_deletes(world: World) -> None:
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.1)
    async with connected(world.fake, client):
        guild = await client.fetch_guild(world.guild.id)
        assert guild.name == "jam server"
        assert {role.name for role in await guild.fetch_roles()} == {"@everyone", "DJ"}
        member = await guild.fetch_member(world.bob.id)
        assert member.name == "bob"
        channel = await client.fetch_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        sent = await channel.send("first", embed=discord.Embed(title="jam", description="lofi"))
        fetched = await channel.fetch_message(sent.id)
        assert fetched.embeds[0].title == "jam"
        await fetched.edit(content="edited")
        await fetched.delete()
        with pytest.raises(discord.NotFound):
            await channel.fetch_message(sent.id)
    message = world.fake.messages[0]
    assert (message.content, message.deleted, message.via) == ("edited", True, "channel")
    assert [edit["content"] for edit in message.edits] == ["edited"]
    assert world.fake.validation_errors == []
    assert "UNKNOWN" not in {request.route for request in world.fake.requests}


async def test_json_answers_have_the_exact_content_type(fake: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{fake.base_url}/users/@me") as response:
        assert response.headers["Content-Type"] == "application/json"
        assert (await response.json())["id"] == str(fake.bot_user_id)


async def test_defer_then_follow_up_with_a_file(world: World) -> None:
    bot = make_bot()
    seen = outcome()

    @bot.tree.command(description="Make a jam")
    async def jam(interaction: discord.Interaction, prompt: str, seconds: int = 10) -> None:
        await interaction.response.defer(thinking=True)
        sent = await interaction.followup.send("here it is", file=discord.File(io.BytesIO(AUDIO), "jam.wav"),
                                               wait=True)
        attachment = sent.attachments[0]
        seen.set_result((prompt, seconds, interaction.filesize_limit, attachment.content_type, await attachment.read()))

    async with connected(world.fake, bot):
        interaction = await world.fake.send_command("jam", {"prompt": "lofi", "seconds": 5}, user=world.alice,
                                                    guild=world.guild, channel=world.channel)
        callback = await interaction.wait_callback()
        assert await settled(seen) == ("lofi", 5, 10 * 1024 * 1024, "audio/x-wav", AUDIO)

    assert callback.type == 5
    assert interaction.ack_latency is not None and interaction.ack_latency < 1
    followup = interaction.followups[0]
    assert followup.content == "here it is"
    assert followup.via == "webhook"
    assert followup.interaction_id == interaction.id
    assert [(item.filename, item.data) for item in followup.attachments] == [("jam.wav", AUDIO)]
    post = next(request for request in world.fake.requests if request.route.startswith("POST /webhooks/"))
    assert post.json["content"] == "here it is"
    assert [upload.filename for upload in post.files] == ["jam.wav"]
    assert interaction.original is not None and interaction.original.via == "callback"
    assert world.fake.messages == [interaction.original, followup]
    assert world.fake.validation_errors == []


async def test_edit_original_response(world: World) -> None:
    bot = make_bot()

    @bot.tree.command(description="Edit")
    async def work(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("working…")
        await interaction.edit_original_response(content="done", embed=discord.Embed(title="jam"))

    async with connected(world.fake, bot):
        interaction = await world.fake.send_command("work", user=world.alice, guild=world.guild,
                                                    channel=world.channel)
        await world.fake.wait_for(lambda: interaction.original is not None and bool(interaction.original.edits))

    original = interaction.original
    assert original is not None
    assert interaction.callback is not None and interaction.callback.type == 4
    assert original.content == "done"
    assert original.embeds[0]["title"] == "jam"
    assert original.edits[0]["content"] == "done"
    assert original.edit_times == [original.edits[0]["at"]]
    assert not interaction.ephemeral


async def test_ephemeral_reply_stays_out_of_the_channel_history(world: World) -> None:
    bot = make_bot()
    history = outcome()

    @bot.tree.command(description="Secret")
    async def secret(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("only you", ephemeral=True)
        await interaction.channel.send("for everyone")  # type: ignore[union-attr]
        history.set_result([message.content async for message in interaction.channel.history(limit=10)])  # type: ignore[union-attr]

    async with connected(world.fake, bot):
        interaction = await world.fake.send_command("secret", user=world.alice, guild=world.guild,
                                                    channel=world.channel)
        assert await settled(history) == ["for everyone"]

    assert interaction.ephemeral
    assert interaction.original is not None and interaction.original.ephemeral


async def test_button_press_updates_the_message(world: World) -> None:
    bot = make_bot()
    presser = outcome()

    class Panel(discord.ui.View):
        @discord.ui.button(label="Again", custom_id="jam:again")
        async def again(self, interaction: discord.Interaction, button: discord.ui.Button[Panel]) -> None:
            presser.set_result(interaction.user.id)
            await interaction.response.edit_message(content=f"again, by {interaction.user.name}", view=None)

    @bot.tree.command(description="Panel")
    async def panel(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("panel", view=Panel())

    async with connected(world.fake, bot):
        command = await world.fake.send_command("panel", user=world.alice, guild=world.guild, channel=world.channel)
        await command.wait_callback()
        assert command.original is not None
        assert command.original.custom_ids() == ["jam:again"]
        press = await world.fake.press_button(command.original, "jam:again", user=world.bob, guild=world.guild)
        callback = await press.wait_callback()
        assert await settled(presser) == world.bob.id

    assert callback.type == 7
    assert command.original.content == "again, by bob"
    assert command.original.components == []
    assert press.original is command.original


async def test_command_sync_is_recorded_and_declares_option_types(world: World) -> None:
    bot = make_bot()
    got = outcome()
    settings = app_commands.Group(name="jamcfg", description="Settings")
    channels = app_commands.Group(name="settings", description="Settings", parent=settings)

    @bot.tree.command(description="Level")
    async def level(interaction: discord.Interaction, amount: float, who: discord.Member) -> None:
        got.set_result((amount, who.id))
        await interaction.response.send_message("ok")

    @channels.command(description="Pick the jam channel")
    async def pick(interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        got.set_result(channel.id)
        await interaction.response.send_message("ok")

    bot.tree.add_command(settings)
    async with connected(world.fake, bot):
        await bot.tree.sync()
        assert world.fake.command_puts == 1
        assert {command["name"] for command in world.fake.commands["global"]} == {"level", "jamcfg"}
        first = await world.fake.send_command("level", {"amount": 2, "who": world.bob}, user=world.alice,
                                              guild=world.guild, channel=world.channel)
        await first.wait_callback()
        assert await settled(got) == (2.0, world.bob.id)
        assert first.payload["data"]["options"][0] == {"name": "amount", "type": 10, "value": 2.0}

        got = outcome()
        second = await world.fake.send_command("jamcfg", {"channel": world.channel}, subcommands=("settings", "pick"),
                                               user=world.alice, guild=world.guild, channel=world.channel)
        await second.wait_callback()
        assert await settled(got) == world.channel.id
        await bot.tree.sync(guild=discord.Object(world.guild.id))
    assert world.fake.command_puts == 2
    assert world.fake.commands[world.guild.id] == []
    assert world.fake.validation_errors == []


async def test_autocomplete_and_dm_interactions(world: World) -> None:
    bot = make_bot()
    where = outcome()

    async def styles(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        matches = [style for style in ("lofi", "lounge", "techno") if style.startswith(current)]
        return [app_commands.Choice(name=style, value=style) for style in matches]

    @bot.tree.command(description="Jam in a style")
    @app_commands.autocomplete(style=styles)
    async def styled(interaction: discord.Interaction, style: str) -> None:
        where.set_result((interaction.guild, interaction.user.id))
        await interaction.response.send_message(style)

    async with connected(world.fake, bot):
        typing = await world.fake.send_autocomplete("styled", {"style": "lo"}, focused="style", user=world.alice,
                                                    guild=world.guild, channel=world.channel)
        callback = await typing.wait_callback()
        dm = await world.fake.send_command("styled", {"style": "lofi"}, user=world.alice, guild=None, channel=4242)
        await dm.wait_callback()
        assert await settled(where) == (None, world.alice.id)

    assert callback.type == 8
    assert callback.data == {"choices": [{"name": "lofi", "value": "lofi"}, {"name": "lounge", "value": "lounge"}]}
    assert dm.original is not None and dm.original.channel_id == 4242


async def test_server_errors_are_retried_or_raised(world: World) -> None:
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.1)
    route = "POST /channels/{channel_id}/messages"
    async with connected(world.fake, client):
        channel = client.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        world.fake.fail_next(route, 502)
        await channel.send("after a 502")
        world.fake.fail_next(route, 503)  # discord.py retries 500/502/504/524 only, on bot-token routes
        with pytest.raises(discord.DiscordServerError):
            await channel.send("after a 503")
    statuses = [request.status for request in world.fake.requests if request.route == route]
    assert statuses == [502, 200, 503]
    assert [message.content for message in world.fake.messages] == ["after a 502"]


async def test_an_answer_lost_after_the_effect_leaves_the_message_posted(world: World) -> None:
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.1)
    route = "POST /channels/{channel_id}/messages"
    async with connected(world.fake, client):
        channel = client.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        world.fake.fail_next(route, 503, after_effect=True)  # discord.py does not retry a 503 on bot routes
        with pytest.raises(discord.DiscordServerError):
            await channel.send("posted, though the answer said no")
        world.fake.fail_next(route, 502, after_effect=True)  # it does retry a 502, blindly: the hazard
        await channel.send("posted twice")
    statuses = [request.status for request in world.fake.requests if request.route == route]
    assert statuses == [503, 502, 200]
    assert [m.content for m in world.fake.messages] == ["posted, though the answer said no", *["posted twice"] * 2]


async def test_webhook_503_is_retried(world: World) -> None:
    bot = make_bot()

    @bot.tree.command(description="Jam")
    async def jam(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.followup.send("made it")

    async with connected(world.fake, bot):
        world.fake.fail_next("POST /webhooks/{application_id}/{token}", 503)
        interaction = await world.fake.send_command("jam", user=world.alice, guild=world.guild, channel=world.channel)
        await world.fake.wait_for(lambda: len(interaction.followups) == 1)
    statuses = [request.status for request in world.fake.requests if request.route.startswith("POST /webhooks")]
    assert statuses == [503, 200]


async def test_rate_limit_is_waited_out(world: World) -> None:
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.1)
    route = "POST /channels/{channel_id}/messages"
    async with connected(world.fake, client):
        channel = client.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        world.fake.fail_next(route, 429, retry_after=0.3)
        await channel.send("patiently")
    limited, passed = [request for request in world.fake.requests if request.route == route]
    assert (limited.status, passed.status) == (429, 200)
    assert passed.at - limited.at >= 0.29  # retry_after was honoured


async def test_expired_token_and_late_acknowledgement(world: World) -> None:
    world.fake.interaction_deadline = 0.2
    bot = make_bot()
    gate = asyncio.Event()
    errors: asyncio.Queue[discord.HTTPException] = asyncio.Queue()

    @bot.tree.command(description="Slow")
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await gate.wait()
        try:
            await interaction.followup.send("too late")
        except discord.HTTPException as error:
            await errors.put(error)

    @bot.tree.command(description="Sleepy")
    async def sleepy(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.3)
        try:
            await interaction.response.defer()
        except discord.HTTPException as error:
            await errors.put(error)

    async with connected(world.fake, bot):
        interaction = await world.fake.send_command("slow", user=world.alice, guild=world.guild, channel=world.channel)
        await interaction.wait_callback()
        world.fake.expire_token(interaction)
        gate.set()
        expired = await asyncio.wait_for(errors.get(), 5)
        late = await world.fake.send_command("sleepy", user=world.alice, guild=world.guild, channel=world.channel)
        unknown = await asyncio.wait_for(errors.get(), 5)

        async with aiohttp.ClientSession() as session:  # discord.py refuses a second response itself
            url = f"{world.fake.base_url}/interactions/{interaction.id}/{interaction.token}/callback"
            async with session.post(url, json={"type": 5}) as again:
                assert (again.status, (await again.json())["code"]) == (400, 40060)

    assert (expired.status, expired.code) == (401, 50027)
    assert isinstance(unknown, discord.NotFound) and unknown.code == 10062
    assert late.callback is None and len(late.rejected_callbacks) == 1
    assert interaction.followups == []


async def test_too_large_upload_is_refused(world: World) -> None:
    bot = make_bot()
    refused = outcome()

    @bot.tree.command(description="Big")
    async def big(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        file = discord.File(io.BytesIO(b"\0" * (interaction.filesize_limit + 1)), "big.wav")
        try:
            await interaction.followup.send(file=file)
        except discord.HTTPException as error:
            refused.set_result(error)

    async with connected(world.fake, bot):
        await world.fake.send_command("big", user=world.alice, guild=world.guild, channel=world.channel,
                                      attachment_size_limit=1024)
        error = await settled(refused)
    assert (error.status, error.code) == (413, 40005)


async def test_an_attachment_option_is_resolved_and_served_by_the_cdn(world: World) -> None:
    bot = make_bot()
    got = outcome()

    @bot.tree.command(description="Remix a file")
    async def remix(interaction: discord.Interaction, file: discord.Attachment, note: str = "") -> None:
        await interaction.response.defer(thinking=True)
        got.set_result((file.filename, file.size, file.content_type, file.ephemeral, await file.read()))
        await interaction.followup.send("got it")

    upload = FakeAttachment("loop.ogg", "audio/ogg", AUDIO)
    liar = FakeAttachment("huge.wav", "audio/wav", b"tiny", claimed_size=500 * 1024 * 1024)
    async with connected(world.fake, bot):
        await bot.tree.sync()
        declared = world.fake.commands["global"][0]["options"][0]
        assert (declared["name"], declared["type"]) == ("file", 11)
        interaction = await world.fake.send_command("remix", {"file": upload, "note": "x"}, user=world.alice,
                                                    guild=world.guild, channel=world.channel)
        assert await settled(got) == ("loop.ogg", len(AUDIO), "audio/ogg", True, AUDIO)
        got = outcome()
        await world.fake.send_command("remix", {"file": liar}, user=world.alice, guild=world.guild,
                                      channel=world.channel)
        assert (await settled(got))[1:2] == (500 * 1024 * 1024,)  # the stated size is what a test says it is

    data = interaction.payload["data"]
    assert data["options"][0] == {"name": "file", "type": 11, "value": str(upload.id)}
    resolved = data["resolved"]["attachments"][str(upload.id)]
    assert resolved["url"].startswith("http://127.0.0.1:") and resolved["size"] == len(AUDIO)
    assert world.fake.downloads == [upload.id, liar.id]
    assert world.fake.validation_errors == [] and world.fake.unknown_routes == []


async def test_a_message_context_menu_and_a_modal(world: World) -> None:
    """A user's message with a file; a message command on it answers with a modal; its submission reaches the bot."""
    bot = make_bot()
    got = outcome()

    class Prompt(discord.ui.Modal, title="Remix this"):
        prompt: discord.ui.TextInput[Prompt] = discord.ui.TextInput(label="Prompt", custom_id="prompt", default="lofi")
        seconds: discord.ui.TextInput[Prompt] = discord.ui.TextInput(label="Seconds", custom_id="seconds",
                                                                     required=False)

        def __init__(self, target: discord.Message) -> None:
            super().__init__()
            self.target = target

        async def on_submit(self, interaction: discord.Interaction) -> None:
            data = await self.target.attachments[0].read()
            got.set_result((self.prompt.value, self.seconds.value, self.target.author.id, data))
            await interaction.response.send_message("remixing")

    async def remix(interaction: discord.Interaction, message: discord.Message) -> None:
        await interaction.response.send_modal(Prompt(message))

    bot.tree.add_command(app_commands.ContextMenu(name="Remix this", callback=remix))
    async with connected(world.fake, bot):
        await bot.tree.sync()
        assert [(c["name"], c["type"]) for c in world.fake.commands["global"]] == [("Remix this", 3)]
        posted = await world.fake.post_message(world.channel, world.bob, "my loop",
                                               [FakeAttachment("loop.mp3", None, AUDIO)])
        menu = await world.fake.send_message_command("Remix this", posted, user=world.alice, guild=world.guild)
        callback = await menu.wait_callback()
        with pytest.raises(ValueError, match="no text input"):
            await world.fake.submit_modal(menu, {"nope": "x"})
        submitted = await world.fake.submit_modal(menu, {"prompt": "dub techno"})
        answer = await submitted.wait_callback()
        assert await settled(got) == ("dub techno", "", world.bob.id, AUDIO)

    assert callback.type == 9 and callback.data is not None and callback.data["title"] == "Remix this"
    target = menu.payload["data"]
    assert (target["type"], target["target_id"]) == (3, str(posted.id))
    assert target["resolved"]["messages"][str(posted.id)]["author"]["id"] == str(world.bob.id)
    assert answer.type == 4 and submitted.original is not None and submitted.original.content == "remixing"
    assert submitted.original.message_type == 0 and menu.original is None
    assert world.fake.validation_errors == [] and world.fake.unknown_routes == []


async def test_disconnect_then_resume_replays_missed_events(world: World) -> None:
    bot = make_bot()
    resumed = asyncio.Event()

    async def on_resumed() -> None:
        resumed.set()

    bot.add_listener(on_resumed)

    @bot.tree.command(description="Ping")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("pong")

    async with connected(world.fake, bot):
        await world.fake.disconnect(4000)
        missed = await world.fake.send_command("ping", user=world.alice, guild=world.guild, channel=world.channel)
        await asyncio.wait_for(resumed.wait(), 5)
        await missed.wait_callback()
        after = await world.fake.send_command("ping", user=world.alice, guild=world.guild, channel=world.channel)
        await after.wait_callback()
    stats = world.fake.gateway.stats
    assert (stats.connections, stats.identifies, stats.resumes) == (2, 1, 1)


async def test_stale_heartbeat_ack_makes_the_client_reconnect(world: World) -> None:
    world.fake.gateway.heartbeat_interval_ms = 100
    bot = make_bot(heartbeat_timeout=0.5)

    @bot.tree.command(description="Ping")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("pong")

    async with connected(world.fake, bot):
        await world.fake.wait_for(lambda: world.fake.gateway.stats.heartbeats >= 2)
        world.fake.heartbeat_ack = False
        started = time.monotonic()
        await world.fake.wait_for(lambda: world.fake.gateway.stats.resumes == 1, timeout=5)
        world.fake.heartbeat_ack = True
        interaction = await world.fake.send_command("ping", user=world.alice, guild=world.guild,
                                                    channel=world.channel)
        await interaction.wait_callback()
    assert time.monotonic() - started >= 0.3  # the client waited for heartbeat_timeout before giving up


async def test_raw_options_reach_the_bot_unchecked(world: World) -> None:
    bot = make_bot()
    got = outcome()

    @bot.tree.command(description="Jam")
    async def jam(interaction: discord.Interaction, seconds: app_commands.Range[int, 1, 30]) -> None:
        got.set_result(seconds)
        await interaction.response.send_message("ok")

    async with connected(world.fake, bot):
        await bot.tree.sync()
        declared = world.fake.commands["global"][0]["options"][0]
        assert (declared["type"], declared["min_value"], declared["max_value"]) == (4, 1, 30)
        # Discord enforces declared ranges; a test can still send what Discord would not.
        interaction = await world.fake.send_command("jam", raw_options=[{"name": "seconds", "type": 4, "value": 99}],
                                                    user=world.alice, guild=world.guild, channel=world.channel)
        await interaction.wait_callback()
        assert await settled(got) == 99  # discord.py does not check ranges: the bot has to


async def test_wait_for_explains_a_timeout(fake: FakeDiscord) -> None:
    def never() -> bool:
        return False

    with pytest.raises(TimeoutError, match=r"never .*last requests: none"):
        await fake.wait_for(never, timeout=0.05)


# -- shards -----------------------------------------------------------------------------------------------------


def shard_client(shard_id: int, shard_count: int = 2) -> commands.AutoShardedBot:
    """A process that runs one shard; its ``ping`` answers with the shard it runs."""
    bot = commands.AutoShardedBot(command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.1,
                                  shard_ids=[shard_id], shard_count=shard_count)

    @bot.tree.command(description="Ping")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"pong from shard {shard_id}")

    return bot


async def answer(interaction: FakeInteraction) -> str:
    callback = await interaction.wait_callback()
    assert callback.data is not None
    return str(callback.data["content"])


def guild_on(fake: FakeDiscord, shard: tuple[int, int], member: FakeUser) -> tuple[FakeGuild, FakeChannel]:
    guild = fake.add_guild(f"guild on shard {shard[0]}", shard=shard)
    guild.add_member(member)
    return guild, guild.add_channel("jams")


def test_a_guild_can_be_made_on_any_shard(fake: FakeDiscord) -> None:
    for shard_count in (1, 2, 3, 16):
        for shard_id in range(shard_count):
            guild = fake.add_guild(shard=(shard_id, shard_count))
            assert (guild.id >> 22) % shard_count == shard_id
    ids = list(fake.guilds)
    assert ids == sorted(ids), "ids made for shards still increase"


async def test_each_shard_gets_its_own_guilds_and_their_interactions(fake: FakeDiscord) -> None:
    alice = fake.add_user("alice")
    places = [guild_on(fake, (shard_id, 2), alice) for shard_id in (0, 1)]
    first, second = shard_client(0), shard_client(1)
    async with connected(fake, first), connected(fake, second):
        assert [guild.id for guild in first.guilds] == [places[0][0].id]
        assert [guild.id for guild in second.guilds] == [places[1][0].id]
        for shard_id, (guild, channel) in enumerate(places):
            interaction = await fake.send_command("ping", user=alice, guild=guild, channel=channel)
            assert await answer(interaction) == f"pong from shard {shard_id}"
        dm = await fake.send_command("ping", user=alice, guild=None, channel=4242)
        assert await answer(dm) == "pong from shard 0"  # direct messages: shard 0
    stats = fake.gateway.stats
    assert (stats.identified, stats.connections) == ([(0, 2), (1, 2)], 2)
    assert fake.validation_errors == [] and fake.unknown_routes == []


async def test_one_shard_resumes_and_gets_what_it_missed(fake: FakeDiscord) -> None:
    alice = fake.add_user("alice")
    places = [guild_on(fake, (shard_id, 2), alice) for shard_id in (0, 1)]
    first, second = shard_client(0), shard_client(1)
    async with connected(fake, first), connected(fake, second):
        await fake.disconnect(4000, shard=(1, 2))
        missed = await fake.send_command("ping", user=alice, guild=places[1][0], channel=places[1][1])
        meanwhile = await fake.send_command("ping", user=alice, guild=places[0][0], channel=places[0][1])
        assert await answer(meanwhile) == "pong from shard 0"
        assert await answer(missed) == "pong from shard 1"  # replayed by its RESUME
        await fake.wait_for(lambda: fake.gateway.connected)
    stats = fake.gateway.stats
    assert (stats.identifies, stats.resumes, stats.connections) == (2, 1, 3)


async def test_an_interaction_for_a_shard_no_client_holds_is_refused(fake: FakeDiscord) -> None:
    alice = fake.add_user("alice")
    (_, _), (guild, channel) = [guild_on(fake, (shard_id, 2), alice) for shard_id in (0, 1)]
    async with connected(fake, shard_client(0)):
        with pytest.raises(RuntimeError, match=r"no client holds the shard .*\[\(0, 2\)\]"):
            await fake.send_command("ping", user=alice, guild=guild, channel=channel)


# Threads ------------------------------------------------------------------------------------------------------


def thread_client() -> discord.Client:
    return discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.1)


async def test_a_thread_started_from_a_text_channel_is_cached_and_takes_messages(world: World) -> None:
    client = thread_client()
    async with connected(world.fake, client):
        channel = client.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        thread = await channel.create_thread(name="lofi jam", type=discord.ChannelType.public_thread,
                                             auto_archive_duration=1440)
        assert (thread.type, thread.parent_id, thread.owner_id) == (discord.ChannelType.public_thread,
                                                                     channel.id, world.fake.bot_user_id)
        assert (thread.archived, thread.locked, thread.auto_archive_duration) == (False, False, 1440)
        assert thread.me is not None and thread.me.id == world.fake.bot_user_id
        guild = channel.guild
        await world.fake.wait_for(lambda: guild.get_thread(thread.id) is not None)
        cached = guild.get_thread(thread.id)
        assert cached is not None and cached.name == "lofi jam" and cached.parent == channel
        assert client.get_channel(thread.id) is cached
        sent = await thread.send("first take", file=discord.File(io.BytesIO(AUDIO), "take1.wav"))
        assert sent.channel.id == thread.id
        assert await sent.attachments[0].read() == AUDIO
        fetched = await client.fetch_channel(thread.id)
        assert isinstance(fetched, discord.Thread)
        assert (fetched.parent_id, fetched.message_count) == (channel.id, 1)
        assert [message.content async for message in thread.history(limit=5)] == ["first take"]
        assert [message.content async for message in channel.history(limit=5)] == []

    [fake_thread] = world.guild.threads_of(world.channel.id)
    assert (fake_thread.id, fake_thread.type, fake_thread.owner_id) == (thread.id, 11, world.fake.bot_user_id)
    assert world.guild.channel(thread.id) is fake_thread
    created = next(frame for frame in world.fake.gateway.stats.dispatched if frame[0] == "THREAD_CREATE")
    assert created[1]["newly_created"] is True and created[1]["parent_id"] == str(world.channel.id)
    assert world.fake.messages[0].channel_id == thread.id
    assert world.fake.validation_errors == [] and world.fake.unknown_routes == []


async def test_a_message_in_a_thread_gets_its_attachment_replaced_in_place(world: World) -> None:
    client = thread_client()
    async with connected(world.fake, client):
        channel = client.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        starter = await channel.send("jam starts here")
        thread = await starter.create_thread(name="jam", auto_archive_duration=60)
        assert thread.id == starter.id  # a thread from a message takes the message's id, as on Discord
        sent = await thread.send("take 1", file=discord.File(io.BytesIO(b"one" * 100), "take1.wav"))
        edited = await sent.edit(content="take 2", attachments=[discord.File(io.BytesIO(AUDIO), "take2.wav")])
        assert [attachment.filename for attachment in edited.attachments] == ["take2.wav"]
        assert await edited.attachments[0].read() == AUDIO
        again = await thread.fetch_message(sent.id)
        assert (again.content, [item.filename for item in again.attachments]) == ("take 2", ["take2.wav"])

    message = world.fake.message_by_id(sent.id)
    assert message is not None and message.channel_id == thread.id
    assert [(item.filename, item.data) for item in message.attachments] == [("take2.wav", AUDIO)]
    assert [edit["content"] for edit in message.edits] == ["take 2"]
    assert world.fake.validation_errors == [] and world.fake.unknown_routes == []


async def test_archiving_a_thread_is_told_to_the_client_and_blocks_edits(world: World) -> None:
    client = thread_client()
    async with connected(world.fake, client):
        channel = client.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        guild = channel.guild
        thread = await channel.create_thread(name="jam", type=discord.ChannelType.public_thread)
        await world.fake.wait_for(lambda: guild.get_thread(thread.id) is not None)
        sent = await thread.send("take 1")
        archived = await thread.edit(archived=True, name="jam (done)")
        assert (archived.archived, archived.name) == (True, "jam (done)")
        await world.fake.wait_for(lambda: guild.get_thread(thread.id) is None)  # discord.py drops archived ones
        with pytest.raises(discord.HTTPException) as refused:
            await sent.edit(content="too late")
        assert (refused.value.status, refused.value.code) == (400, 50083)
        await thread.send("back again")  # a post unarchives a thread that is not locked
        await world.fake.wait_for(lambda: guild.get_thread(thread.id) is not None)
        unarchived = guild.get_thread(thread.id)
        assert unarchived is not None and not unarchived.archived and unarchived.name == "jam (done)"
        await thread.edit(archived=True, locked=True)
        with pytest.raises(discord.HTTPException):
            await thread.send("locked out")

    [fake_thread] = world.guild.threads_of(world.channel.id)
    assert (fake_thread.name, fake_thread.archived, fake_thread.locked) == ("jam (done)", True, True)
    assert fake_thread.message_count == 2
    updates = [frame[1] for frame in world.fake.gateway.stats.dispatched if frame[0] == "THREAD_UPDATE"]
    assert [update["thread_metadata"]["archived"] for update in updates] == [True, False, True]
    assert world.fake.validation_errors == [] and world.fake.unknown_routes == []


async def test_a_command_and_a_button_in_a_thread_carry_the_thread_as_channel(world: World) -> None:
    thread = world.guild.add_thread(world.channel, "jam session")
    bot = make_bot()
    seen: list[tuple[str, Any, int | None]] = []

    class Panel(discord.ui.View):
        @discord.ui.button(label="Again", custom_id="jam:again")
        async def again(self, interaction: discord.Interaction, button: discord.ui.Button[Panel]) -> None:
            seen.append(("button", interaction.channel, interaction.channel_id))
            await interaction.response.edit_message(content="again", view=None)

    @bot.tree.command(description="Jam")
    async def jam(interaction: discord.Interaction) -> None:
        seen.append(("command", interaction.channel, interaction.channel_id))
        await interaction.response.send_message("in the thread", view=Panel())

    async with connected(world.fake, bot):
        assert bot.get_channel(thread.id) is not None  # sent with GUILD_CREATE
        command = await world.fake.send_command("jam", user=world.alice, guild=world.guild, channel=thread)
        await command.wait_callback()
        assert command.original is not None and command.original.channel_id == thread.id
        press = await world.fake.press_button(command.original, "jam:again", user=world.bob, guild=world.guild)
        await press.wait_callback()

    assert command.payload["channel"]["type"] == 11
    assert command.payload["channel"]["parent_id"] == str(world.channel.id)
    assert press.payload["channel_id"] == str(thread.id)
    assert [(kind, channel_id) for kind, _, channel_id in seen] == [("command", thread.id), ("button", thread.id)]
    for _, channel, _ in seen:
        assert isinstance(channel, discord.Thread)
        assert channel.id == thread.id and channel.parent_id == world.channel.id
        assert isinstance(channel.parent, discord.TextChannel) and channel.parent.name == "jams"
    assert thread.message_count == 1


async def test_a_refused_thread_is_403_missing_access(world: World) -> None:
    world.channel.refuse_threads = True
    client = thread_client()
    async with connected(world.fake, client):
        channel = client.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.Forbidden) as refused:
            await channel.create_thread(name="jam", type=discord.ChannelType.public_thread)
        assert refused.value.code == 50001
        await channel.send("no thread, here instead")  # the channel itself still works
    assert world.guild.threads_of(world.channel.id) == []
    assert [message.channel_id for message in world.fake.messages] == [world.channel.id]
