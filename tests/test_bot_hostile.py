"""Hostile and bad input: prompts that try to ping or break out of markdown, forged values, stale commands,
another guild's jobs, missing permissions, spam; and the token never reaching the log.

The pure parts (escaping, titles, status text, the result card, prompt cleaning) are checked with
hypothesis; a few end-to-end examples go through the real bot against the fake Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import tracemalloc
import unicodedata
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, cast

import pytest
from discord import app_commands
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bot.app import JamBot
from bot.errors import STALE_COMMAND, user_message
from bot.tickets import Ticket, title_for
from bot.ui.embeds import result_embed
from bot.ui.text import safe
from generation.errors import InvalidJob
from generation.jobs import PROMPT_MAX_CHARS, JobRequest
from tests.bot_harness import MANAGE_GUILD, TOKEN, Gate, World, gated, running_bot, user_text
from tests.fakes.discord import FakeDiscord, FakeInteraction, FakeMessage
from tests.fakes.models import (
    ATTACH_FILES,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_MEMBER_PERMISSIONS,
    EMBED_LINKS,
    SEND_MESSAGES,
)
from tests.helpers import FaultyBackend

EPHEMERAL = 64
ZWSP = "\u200b"
JOINERS = "\u200c\u200d"
ANYWHERE = set("*_~|`[<")  # emphasis, code, spoilers, masked links, <@mentions>, <#channels>, <t:...>
AT_LINE_START = set("#>-")  # headings, quotes, lists, -# subtext

# -- what "harmless" means, as checks on text the bot sends ---------------------------------------------------


def live_markup(text: str) -> list[str]:
    """What Discord would act on in one line of ``text``: markdown characters not escaped with a backslash,
    "://" (a link), "1. " at the start (a list) and ``@`` not followed by a zero-width space (which stops
    @everyone, @here, <@id> and <@&id> from forming)."""
    found, index, line_start = [], 0, True
    while index < len(text):
        char = text[index]
        if char == "\\":
            index, line_start = index + 2, False
            continue
        if (
            char in ANYWHERE
            or (line_start and char in AT_LINE_START)
            or (char == "@" and text[index + 1 : index + 2] != ZWSP)
            or (char == ":" and text.startswith("//", index + 1))
        ):
            found.append(char)
        line_start = line_start and char == " "
        index += 1
    if re.match(r" *\d+\. ", text):
        found.append("1. ")
    return found


def unescape(text: str) -> str:
    """What a reader sees of escaped text: backslash escapes resolved, the zero-width space after @ gone."""
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            out.append(text[index + 1])
            index += 2
            continue
        if not (char == ZWSP and text[index - 1 : index] == "@"):
            out.append(char)
        index += 1
    return "".join(out)


def visible(text: str) -> str:
    """``text`` without control, format (bidi, zero-width) and unpaired surrogate characters; spaces for
    white space. Joiners stay: emoji sequences need them."""
    kept = (ch for ch in text if ch.isspace() or ch in JOINERS or unicodedata.category(ch)[0] != "C")
    return "".join(" " if ch.isspace() else ch for ch in kept)


def mentions_only(text: str, allowed_user: int | None) -> bool:
    """No @everyone/@here, no role mention, no user mention except ``allowed_user``'s."""
    if re.search(r"@(everyone|here)", text) or re.search(r"<@&\d+>", text):
        return False
    return all(int(user) == allowed_user for user in re.findall(r"<@!?(\d+)>", text))


# -- hypothesis strategies --------------------------------------------------------------------------------------

HOSTILE_FRAGMENTS = [
    "@everyone", "@here", "<@&123456789012345678>", "<@123456789012345678>", "<@!123456789012345678>",
    "```", "`", "``", "||", "**", "__", "~~", "# ", "## ", "-# ", "> ", ">>> ", "- ", "* ", "1. ",
    "[click](https://evil.example)", "https://evil.example/```", "<https://x.y>", "<t:0:R>", "</generate:1>",
    "<#123456789012345678>", "<:emoji:123456789012345678>", "\\", "\\\\", "\n", "\r\n", "\t", "\x00", "\x07",
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202e", "\u202d", "\u2066", "\u2069", "\u061c",
    "\ud800", "\udfff", "🎸", "👩\u200d🎤", "𠀀", "𪜀", "Ω", "ـ", "…",
]
hostile_text = st.lists(
    st.one_of(st.sampled_from(HOSTILE_FRAGMENTS), st.text(max_size=4), st.characters()), max_size=60
).map("".join)


# -- pure parts ---------------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(text=hostile_text, limit=st.integers(min_value=1, max_value=400))
def test_safe_text_is_inert_bounded_and_faithful(text: str, limit: int) -> None:
    out = safe(text, limit)
    assert len(out) <= limit
    assert live_markup(out) == [], out
    assert mentions_only(out, None)
    assert "\n" not in out and "\r" not in out
    assert all(ch in JOINERS or ch == ZWSP or unicodedata.category(ch)[0] != "C" for ch in out), out
    whole = safe(text, 10**6)
    if out == whole:
        assert unescape(out) == visible(text)  # nothing but escapes added, nothing but controls dropped
    else:  # cut with an ellipsis, between escapes
        assert out.endswith("…") and visible(text).startswith(unescape(out[:-1]))


def test_safe_text_regressions() -> None:
    # discord.utils.escape_markdown leaves URLs alone, so backticks inside one used to open a code block
    assert live_markup(safe("https://evil.example/``` @everyone")) == []
    assert unescape(safe("a ```b``` c")) == "a ```b``` c"
    assert safe("x" * 500, 100) == "x" * 99 + "…"
    assert len(safe("*" * 500, 100)) <= 100
    assert safe("\u202eevil\u200b") == "evil"
    assert safe("\u200b# not a heading") == "\\# not a heading"  # what is dropped cannot hide a line start
    assert safe("lo-fi in C# minor, 80 bpm: slow") == "lo-fi in C# minor, 80 bpm: slow"  # escapes only where needed


@settings(max_examples=200, deadline=None)
@given(
    prompt=hostile_text,
    kind=st.sampled_from(["generate", "regen", "vary", "extend"]),
    duration=st.floats(min_value=1, max_value=30),
    lines=st.lists(st.tuples(st.text(min_size=12, max_size=12), hostile_text), max_size=5),
)
def test_titles_and_status_messages_keep_the_prompt_inert_and_within_2000(
    prompt: str, kind: str, duration: float, lines: list[tuple[str, str]]
) -> None:
    title = title_for(kind, prompt, duration, 3)
    inner = title[title.index("**") + 2 : title.rindex("**")]  # the prompt between our own bold markers
    assert live_markup(inner) == []
    assert len(title) <= 256
    ticket = Ticket(cast(Any, None), title)
    for job_id, text in lines:
        ticket.set_line(job_id, safe(text, 1500))
    rendered = ticket.render()
    assert len(rendered) <= 2000
    assert rendered.startswith(title)
    assert mentions_only(rendered, None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(prompt=hostile_text, user_id=st.integers(min_value=10**17, max_value=10**19))
def test_the_result_card_is_inert_and_within_discords_limits(prompt: str, user_id: int) -> None:
    try:
        request = JobRequest.create(prompt=prompt, duration=2.0)
    except InvalidJob:
        assume(False)
        return
    title = title_for("generate", request.prompt, request.duration).replace("**", "")
    embed = result_embed(
        request, job_id="0123456789ab", user_id=user_id, queued_for=1.0, generated_in=2.0, length=2.0, title=title
    )
    assert len(embed) <= 6000
    assert embed.title is not None and len(embed.title) <= 256
    assert embed.description is not None and len(embed.description) <= 4096
    assert live_markup(embed.description) == []
    assert unescape(embed.description) == request.prompt
    for field in embed.fields:
        assert field.name is not None and field.value is not None
        assert len(field.name) <= 256 and len(field.value) <= 1024
    text = " ".join([embed.title, embed.description, *(str(field.value) for field in embed.fields)])
    assert mentions_only(text, user_id)


@settings(max_examples=300, deadline=None)
@given(prompt=st.one_of(hostile_text, st.text(min_size=PROMPT_MAX_CHARS - 5, max_size=PROMPT_MAX_CHARS + 50)))
def test_prompts_are_cleaned_or_refused_in_plain_words(prompt: str) -> None:
    try:
        cleaned = JobRequest.create(prompt=prompt).prompt
    except InvalidJob as exc:
        assert str(exc).startswith("prompt: ")
        assert "is empty" in str(exc) or "the limit is 300" in str(exc)
        return
    assert 1 <= len(cleaned) <= PROMPT_MAX_CHARS
    assert cleaned == cleaned.strip() and "  " not in cleaned
    assert all(ch == " " or not ch.isspace() for ch in cleaned)
    assert all(ch in JOINERS or unicodedata.category(ch)[0] != "C" for ch in cleaned)


def test_stale_commands_get_a_plain_message() -> None:
    assert user_message(app_commands.CommandNotFound("nosuchcommand", [])) == STALE_COMMAND
    assert "isn't available" in STALE_COMMAND and "try again" in STALE_COMMAND


# -- end to end: helpers ------------------------------------------------------------------------------------


def strings_in(value: object) -> Iterable[str]:
    """Every string inside a JSON value (an embed: title, description, fields, footer...)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def sent_texts(message: FakeMessage) -> Iterable[tuple[str, dict[str, Any] | None]]:
    """Every text the bot put in ``message`` (content and embed text, first and after each edit), each
    with the allowed_mentions it was sent with."""
    yield message.content, message.allowed_mentions
    yield from ((text, message.allowed_mentions) for text in strings_in(message.embeds))
    for edit in message.edits:
        mentions = edit.get("allowed_mentions", message.allowed_mentions)
        yield str(edit.get("content") or ""), mentions
        yield from ((text, mentions) for text in strings_in(edit.get("embeds") or []))


def assert_never_pings(fake: FakeDiscord, requester: int) -> None:
    """Every message and edit: no mention but the requester's can form, and none is allowed to ping."""
    assert fake.messages
    for message in fake.messages:
        assert len(message.content) <= 2000
        for embed in message.embeds:
            assert len(embed.get("title", "")) <= 256 and len(embed.get("description", "")) <= 4096
        for text, mentions in sent_texts(message):
            assert mentions_only(text, requester), text
            if "@" in text or "<" in text:  # a mention could form: the request must forbid it
                assert mentions is not None, f"no allowed_mentions for {text!r}"
            if mentions is not None:
                assert not {"everyone", "roles"} & set(mentions.get("parse", [])), mentions
                assert {int(user) for user in mentions.get("users", [])} <= {requester}, mentions


async def immediate_refusal(interaction: FakeInteraction) -> str:
    callback = await interaction.wait_callback()
    assert callback.type == 4, f"expected an immediate refusal, got callback type {callback.type}"
    assert callback.data is not None and callback.data["flags"] & EPHEMERAL
    text = str(callback.data["content"])
    assert text and "Traceback" not in text and "error id" not in text, text
    return text


async def command(world: World, name: str, raw_options: list[dict[str, Any]], **kwargs: Any) -> FakeInteraction:
    kwargs = {"user": world.alice, "guild": world.guild, "channel": world.jam, **kwargs}
    return await world.fake.send_command(name, raw_options=raw_options, **kwargs)


def status(interaction: FakeInteraction) -> str:
    """The status message of a deferred command, as it reads now."""
    return interaction.original.content if interaction.original is not None else ""


def prompt_option(value: object) -> dict[str, Any]:
    return {"name": "prompt", "type": 3, "value": value}


@contextlib.asynccontextmanager
async def gated_bot(
    world: World, model_dir: Path, data_dir: Path, **options: Any
) -> AsyncIterator[tuple[JamBot, Gate, FaultyBackend]]:
    """The bot, with every batch held at the backend until the test opens the gate (opened on exit)."""
    gate, backend = gated(model_dir)
    async with running_bot(world.fake, model_dir, data_dir, backend_factory=lambda _: backend, **options) as bot:
        try:
            yield bot, gate, backend
        finally:
            gate.open()


# -- end to end: prompts ------------------------------------------------------------------------------------


async def test_hostile_prompts_are_posted_harmlessly_or_refused_clearly(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    role = world.guild.roles[-1].id
    posted = [
        "@everyone drop the bass @here",
        f"<@&{role}> and <@{world.bob.id}> and <@!{world.mod.id}> vibes",
        "```\n@everyone\n``` break out of the block",
        "`tick` ``double`` ||spoiler|| ~~strike~~ __under__ **bold** \\",
        "# heading\n> quote\n- list [masked](https://evil.example/@everyone) https://x.y/```",
        "𠀀𪜀 CJK ext B 🎸🥁 emoji 👩\u200d🎤 joined",
        "\u202eevil rtl\u202c override \u200bzero\u200bwidth \x07bell\ufeff",
        "-# subtext <t:0:R> </generate:1> <#123456789012345678>",
        "🎸" * PROMPT_MAX_CHARS,
    ]
    refused = {"": "is empty", "   \n\t ": "is empty", "\u200b\u202e\x00": "is empty",
               "x" * (PROMPT_MAX_CHARS + 1): "the limit is 300", "🎸" * 1000: "the limit is 300"}
    async with running_bot(
        world.fake, tiny_model_dir, tmp_path, user_max_jobs=50, user_rate_count=100, engine={"max_batch": 4}
    ):
        for prompt, expected in refused.items():
            text = await immediate_refusal(await command(world, "generate", [prompt_option(prompt)]))
            assert text.startswith("prompt: ") and expected in text, (prompt, text)
        jobs = [await world.generate(prompt=prompt, duration=1) for prompt in posted]
        for job in jobs:
            await world.result_of(job, timeout=120)
        await world.fake.wait_for(lambda: all("posted" in status(job) for job in jobs))
    for prompt, job in zip(posted, jobs, strict=True):
        assert job.original is not None
        cleaned = JobRequest.create(prompt=prompt).prompt
        assert safe(cleaned, 150) in job.original.content  # the status message shows it, escaped
        title = job.original.content.split("\n", 1)[0]
        assert live_markup(title[title.index("**") + 2 : title.rindex("**")]) == []
        (post,) = [m for m in world.fake.messages if m.interaction_id == job.id and m.attachments]
        assert unescape(post.embeds[0]["description"]) == cleaned
        assert live_markup(post.embeds[0]["description"]) == []
    assert_never_pings(world.fake, world.alice.id)


# -- end to end: forged values, stale commands, wrong types --------------------------------------------------


async def test_values_no_client_should_send_get_a_clear_message(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Each beyond what a Discord client sends; JSON has no NaN or infinity, so +-1e308 stand in for them."""
    lofi = prompt_option("lofi")
    cases: list[tuple[list[dict[str, Any]], str]] = [
        ([lofi, {"name": "temperature", "type": 10, "value": 1e308}], "temperature: must be at most 5"),
        ([lofi, {"name": "cfg", "type": 10, "value": -1e308}], "must be a finite number >= 0"),
        ([lofi, {"name": "top_p", "type": 10, "value": 1e308}], "top_p: must be between 0 and 1"),
        ([lofi, {"name": "top_p", "type": 10, "value": -0.5}], "top_p: must be between 0 and 1"),
        ([lofi, {"name": "duration", "type": 5, "value": True}], "duration: Input should be a valid number"),
        ([lofi, {"name": "duration", "type": 10, "value": 1e308}], "duration: must be between 1 and 30"),
        ([lofi, {"name": "seed", "type": 3, "value": "abc"}], "seed: Input should be a valid integer"),
        ([lofi, {"name": "seed", "type": 5, "value": True}], "seed: Input should be a valid integer"),
        ([lofi, {"name": "seed", "type": 4, "value": 2**62}], "seed: must be between 0 and"),
        ([lofi, {"name": "seed", "type": 10, "value": 1.5}], "seed: Input should be a valid integer"),
        ([prompt_option(5)], "prompt: Input should be a valid string"),
        ([lofi, {"name": "format", "type": 3, "value": "ogg"}], 'The value "ogg" doesn\'t fit that option'),
        ([lofi, {"name": "format", "type": 3, "value": "@everyone"}], "expected one of opus, mp3, wav, flac"),
    ]
    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:
        for options, expected in cases:
            text = await immediate_refusal(await command(world, "generate", options))
            assert expected in text, (options, text)
            assert mentions_only(text, None)
        assert bot.engine.jobs() == [] and bot.pipeline.tickets() == []


async def test_unknown_commands_and_options_of_the_wrong_type_get_a_clear_message(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """What discord.py reports to tree.on_error when Discord's copy of the commands is not the bot's."""

    def settings_call(sub: str, options: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": "settings", "type": 2, "options": [{"name": sub, "type": 1, "options": options}]}]

    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        stale = [
            await command(world, "nosuchcommand", []),  # CommandNotFound
            await command(world, "generate", []),  # a required option missing: CommandSignatureMismatch
            await command(world, "jamgen", settings_call("nosuch", []), user=world.mod),  # unknown subcommand
            await command(world, "jamgen", [], user=world.mod),  # a group invoked: CommandSignatureMismatch
        ]
        for interaction in stale:
            assert await immediate_refusal(interaction) == STALE_COMMAND

        channel = [{"name": "channel", "type": 3, "value": "#jam"}]
        wrong = await command(world, "jamgen", settings_call("allow-channel", channel), user=world.mod)
        assert "expected a channel" in await immediate_refusal(wrong)

        typing = await world.fake.send_autocomplete(
            "nosuchcommand", {"job": ""}, focused="job", user=world.alice, guild=world.guild, channel=world.jam
        )
        callback = await typing.wait_callback()
        assert callback.type == 8 and callback.data == {"choices": []}  # autocomplete can only get choices


# -- end to end: permissions, guilds, buttons ----------------------------------------------------------------


async def test_a_channel_where_the_bot_cannot_post_is_refused_before_any_work(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:
        (post,) = await world.result_of(await world.generate(prompt="first"), timeout=60)
        await world.fake.wait_for(lambda: bot.pipeline.tickets() == [] and bot.engine.jobs() == [])
        for missing in (ATTACH_FILES, EMBED_LINKS, SEND_MESSAGES):
            world.guild.bot_permissions = DEFAULT_BOT_PERMISSIONS & ~missing
            text = await immediate_refusal(await world.generate(prompt="lofi"))
            assert "I can't post tracks in this channel" in text and "Ask an admin" in text
            job_id = post.embeds[0]["footer"]["text"].split()[1]
            pressed = await world.fake.press_button(post, f"jamgen:regen:{job_id}", user=world.alice, guild=world.guild)
            assert "I can't post tracks" in await immediate_refusal(pressed)
            assert bot.engine.jobs() == [] and bot.pipeline.tickets() == []  # nothing started, nothing stuck
        world.guild.bot_permissions = DEFAULT_BOT_PERMISSIONS
        assert (await (await world.generate(prompt="lofi")).wait_callback()).type == 5


async def test_jobs_of_another_guild_stay_there(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    second = world.fake.add_guild("another server")
    elsewhere = second.add_channel("music")
    for user in (world.alice, world.bob):
        second.add_member(user)
    secret = "secret prompt of the other server"
    async with gated_bot(world, tiny_model_dir, tmp_path, engine={"max_batch": 1}) as (bot, gate, backend):
        there = await world.fake.send_command(
            "generate", {"prompt": secret, "duration": 1}, user=world.alice, guild=second, channel=elsewhere
        )
        await world.fake.wait_for(lambda: "`" in status(there))
        job_id = status(there).split("`")[1]

        async def in_guild_1(name: str, options: dict[str, object], user: Any = None) -> str:
            sent = await world.fake.send_command(name, options, user=user or world.alice, guild=world.guild,
                                                 channel=world.jam)
            callback = await sent.wait_callback()
            assert callback.data is not None and callback.data["flags"] & EPHEMERAL
            return user_text(sent)

        listing = await in_guild_1("queue", {})
        assert secret not in listing and job_id not in listing
        assert "You have no jobs queued here" in listing and "1 generating" in listing  # the totals still count
        assert "You have no queued or running jobs" in await in_guild_1("cancel", {})
        assert "of yours is queued or running here" in await in_guild_1("cancel", {"job": job_id})
        assert "of yours" in await in_guild_1("cancel", {"job": job_id}, user=world.mod)  # guild 1's moderator
        for user in (world.alice, world.mod):
            typing = await world.fake.send_autocomplete(
                "cancel", {"job": ""}, focused="job", user=user, guild=world.guild, channel=world.jam
            )
            assert (await typing.wait_callback()).data == {"choices": []}

        listing_there = await world.fake.send_command("queue", {}, user=world.alice, guild=second, channel=elsewhere)
        await listing_there.wait_callback()
        assert secret in user_text(listing_there) and job_id in user_text(listing_there)  # visible where it lives

        gate.open()
        (theirs,) = await world.result_of(there)
        (ours,) = await world.result_of(await world.generate(prompt="ours", duration=1))
        regen = f"jamgen:regen:{job_id}"
        # alice, in guild 1, presses a button whose custom_id names her job of the other guild (a forged id:
        # a message of guild 2 can only be pressed in guild 2)
        ours.components[0]["components"][0]["custom_id"] = regen
        forged = await world.fake.press_button(ours, regen, user=world.alice, guild=world.guild)
        assert "doesn't know that track" in await immediate_refusal(forged)
        assert len(backend.batches) == 2  # the press started nothing
        await world.fake.wait_for(lambda: bot.pipeline.tickets() == [])  # alice's 2 jobs are over
        pressed_there = await world.fake.press_button(theirs, regen, user=world.alice, guild=second)
        assert (await pressed_there.wait_callback()).type == 5  # the same press where the job lives is accepted
        await world.result_of(pressed_there)


async def test_every_settings_subcommand_is_refused_without_manage_server(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Even from a client that shows the commands to everyone (default_member_permissions ignored)."""
    role = world.guild.add_role("vip")
    calls: dict[str, dict[str, object]] = {
        "show": {}, "allow-channel": {"channel": world.jam.id}, "disallow-channel": {"channel": world.jam.id},
        "all-channels": {}, "max-duration": {"seconds": 3}, "limits": {"max_jobs": 9, "requests": 9},
        "format": {"format": "wav"}, "exempt-role": {"role": role.id}, "jams": {"seconds": 60, "sections": 3},
    }
    member_permissions = DEFAULT_MEMBER_PERMISSIONS  # what a member usually has: not Manage Server
    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:
        before = bot.store.guild(world.guild.id)
        registered = next(c for c in world.fake.commands["global"] if c["name"] == "jamgen")
        subcommands = {option["name"] for option in registered["options"][0]["options"]}
        assert subcommands == set(calls)  # a new subcommand must be added here too
        for name, options in calls.items():
            for permissions in (None, member_permissions):
                sent = await world.fake.send_command(
                    "jamgen", options, user=world.alice, guild=world.guild, channel=world.jam,
                    subcommands=("settings", name), permissions=permissions,
                )
                assert "Manage Server" in await immediate_refusal(sent), name
        assert bot.store.guild(world.guild.id) == before
        allowed = await world.fake.send_command(
            "jamgen", {"seconds": 3}, user=world.alice, guild=world.guild, channel=world.jam,
            subcommands=("settings", "max-duration"), permissions=member_permissions | MANAGE_GUILD,
        )
        assert "Saved" in await immediate_refusal(allowed)  # the same call passes with the permission


# -- end to end: spam -------------------------------------------------------------------------------------------


def forget_fake_history(fake: FakeDiscord, keep: Iterable[FakeInteraction]) -> None:
    """The fake records every interaction, request, message and dispatched event; drop those records so that
    what tracemalloc sees growing is the bot, not the test's own bookkeeping."""
    kept = {interaction.id: interaction for interaction in keep}
    fake.interactions = kept
    fake.requests.clear()
    fake.messages = [m for m in fake.messages if m.interaction_id in kept]
    fake._messages_by_id = {m.id: m for m in fake.messages}
    fake.gateway.forget_log()
    fake.gateway.stats.received.clear()
    fake.gateway.stats.dispatched.clear()


async def burst(world: World, count: int, chunk: int = 50) -> list[FakeInteraction]:
    """``count`` /generate from alice as fast as the gateway takes them (in chunks, so that each is answered
    within Discord's 3 s)."""
    sent: list[FakeInteraction] = []
    for start in range(0, count, chunk):
        batch = [await world.generate(prompt=f"spam {start + i}") for i in range(min(chunk, count - start))]
        await world.fake.wait_for(lambda: all(i.callback is not None for i in batch), timeout=30)  # noqa: B023
        sent += batch
    return sent


async def traced_after_settling() -> int:
    """Traced bytes once the last answers' buffers are gone (without the pause, they add up to ~1 MB noise)."""
    await asyncio.sleep(0.3)
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_a_burst_of_1000_from_one_user_leaves_others_served_and_memory_flat(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with gated_bot(world, tiny_model_dir, tmp_path) as (bot, gate, _):
        first = await burst(world, 100)
        bobs = await world.generate(user=world.bob, prompt="bob's turn", duration=1)
        assert (await bobs.wait_callback()).type == 5  # everyone else is still served
        accepted = [i for i in first if i.callback is not None and i.callback.type == 5]
        keep = [*accepted, bobs]
        forget_fake_history(world.fake, keep)
        tracemalloc.start()
        try:
            sizes, answers, texts = [], [], set()
            for _ in range(3):
                batch = await burst(world, 300)
                answers += [i.callback.type for i in batch if i.callback is not None]
                texts |= {str((i.callback.data or {}).get("content")) for i in batch if i.callback is not None}
                forget_fake_history(world.fake, keep)
                sizes.append(await traced_after_settling())
        finally:
            tracemalloc.stop()
        assert len(accepted) == 2 and answers == [4] * 900  # alice gets her 2 jobs, then refusals
        assert all("the limit is 2" in text for text in texts), texts
        assert len(bot.pipeline.tickets()) == 3 and len(bot.engine.jobs()) == 3
        assert len(bot.pipeline.admission) <= 2  # one bucket per user who spent tokens
        # measured: ~30 KiB; keeping each refused Interaction alive would add ~900 KiB per 300
        growth = sizes[2] - sizes[1]
        assert growth < 512 * 1024, f"memory grew by {growth / 1024:.0f} KiB over 300 refused requests"
        gate.open()
        await world.result_of(bobs, timeout=60)
        for interaction in accepted:
            await world.result_of(interaction, timeout=60)


# -- the token ------------------------------------------------------------------------------------------------


async def test_the_token_never_reaches_the_log(
    world: World, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("discord", "discord.http", "discord.gateway", "discord.client"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:
        (post,) = await world.result_of(await world.generate(prompt="lofi"))
        job_id = post.embeds[0]["footer"]["text"].split()[1]
        pressed = await world.fake.press_button(post, f"jamgen:regen:{job_id}", user=world.alice, guild=world.guild)
        await world.result_of(pressed)
        await immediate_refusal(await world.generate(prompt="x", duration=999))
        listing = await world.fake.send_command("queue", {}, user=world.alice, guild=world.guild, channel=world.jam)
        await listing.wait_callback()
        logging.getLogger("test").debug("settings: %s %r", bot.settings, bot.settings)
    loggers = {record.name for record in caplog.records if record.levelno == logging.DEBUG}
    assert {"discord.http", "discord.gateway", "discord.client"} <= loggers  # discord.py's debug output was there
    secret = TOKEN.rsplit(".", 1)[-1]  # the token's signature: its first part is only the bot's id in base64
    assert TOKEN not in caplog.text and secret not in caplog.text


@pytest.fixture(autouse=True)
def _quiet_discord_loggers() -> Iterable[None]:
    """The token test turns discord.py's loggers up to DEBUG; put them back afterwards."""
    names = ("discord", "discord.http", "discord.gateway", "discord.client")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)

