"""Guild settings (Manage Server only, persisted), /help, command sync, DMs and the error boundary."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from tests.bot_harness import World, running_bot, user_text
from tests.helpers import FaultyBackend, tiny_backend

EPHEMERAL = 64


async def reply(interaction: object) -> str:
    callback = await interaction.wait_callback()  # type: ignore[attr-defined]
    assert callback.data is not None and callback.data["flags"] & EPHEMERAL, "expected an ephemeral reply"
    return user_text(interaction)  # type: ignore[arg-type]


async def settings(world: World, user: object, *path: str, **options: object) -> str:
    interaction = await world.fake.send_command(
        "jamgen", options, user=user, guild=world.guild, channel=world.jam, subcommands=("settings", *path)  # type: ignore[arg-type]
    )
    return await reply(interaction)


async def test_settings_need_manage_server_checked_by_the_bot(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        assert "Manage Server" in await settings(world, world.alice, "max-duration", seconds=5)
        assert "Manage Server" in await settings(world, world.alice, "show")
        command = next(c for c in world.fake.commands["global"] if c["name"] == "jamgen")
        assert int(command["default_member_permissions"]) == 1 << 5  # hidden from members by default too


async def test_channels_duration_and_format_settings_apply_and_persist(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        assert "Saved" in await settings(world, world.mod, "allow-channel", channel=world.jam.id)
        assert "Saved" in await settings(world, world.mod, "max-duration", seconds=3)
        assert "Saved" in await settings(world, world.mod, "format", format="flac")
        elsewhere = await world.generate(channel=world.other)
        assert f"<#{world.jam.id}>" in await reply(elsewhere)
    async with running_bot(world.fake, tiny_model_dir, tmp_path):  # after a restart
        shown = await settings(world, world.mod, "show")
        assert f"<#{world.jam.id}>" in shown and "3 s" in shown and "flac" in shown
        too_long = await world.generate(duration=10)
        assert "between 1 and 3 seconds" in await reply(too_long)
        ok = await world.generate(duration=2)
        (post,) = await world.result_of(ok)
    assert post.attachments[0].filename.endswith(".flac")


async def test_limits_setting_and_exempt_role(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    vip = world.guild.add_role("vip")
    member = world.guild.member(world.bob.id)
    assert member is not None
    member.roles.append(vip)
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        assert "Saved" in await settings(world, world.mod, "limits", requests=1, window_minutes=60)
        assert "Saved" in await settings(world, world.mod, "exempt-role", role=vip.id)
        assert (await (await world.generate()).wait_callback()).type == 5
        assert "try again in" in await reply(await world.generate())
        for _ in range(3):  # bob has the exempt role
            assert (await (await world.generate(user=world.bob)).wait_callback()).type == 5


async def test_help_explains_limits_and_licence(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        interaction = await world.fake.send_command("help", {}, user=world.alice, guild=world.guild, channel=world.jam)
        callback = await interaction.wait_callback()
    assert callback.data is not None and callback.data["flags"] & EPHEMERAL
    text = str(callback.data["embeds"])
    assert "CC-BY-NC 4.0" in text and "2 jobs" in text and "/generate" in text


async def test_commands_are_synced_once_with_ranges_and_choices(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        pass
    puts = world.fake.command_puts
    generate = next(c for c in world.fake.commands["global"] if c["name"] == "generate")
    options = {option["name"]: option for option in generate["options"]}
    assert (options["duration"]["min_value"], options["duration"]["max_value"]) == (1, 30)
    assert options["prompt"]["max_length"] == 300
    assert [c["value"] for c in options["format"]["choices"]] == ["opus", "mp3", "wav", "flac"]
    assert options["model"]["autocomplete"] is True
    async with running_bot(world.fake, tiny_model_dir, tmp_path):  # unchanged tree: no second sync
        pass
    assert world.fake.command_puts == puts


async def test_test_guild_sync(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path, test_guild_id=world.guild.id):
        pass
    names = {c["name"] for c in world.fake.commands[world.guild.id]}
    assert {"generate", "queue", "cancel", "help", "jamgen"} <= names


async def test_dm_gets_a_clear_message(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        interaction = await world.fake.send_command(
            "generate", {"prompt": "x"}, user=world.alice, guild=None, channel=4242
        )
        assert "not in DMs" in await reply(interaction)


async def test_unexpected_errors_show_an_id_and_log_the_traceback(
    world: World, tiny_model_dir: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:

        def explode(*args: object, **kwargs: object) -> None:
            raise RuntimeError("secret internal detail")

        monkeypatch.setattr(bot.pipeline, "admit", explode)
        with caplog.at_level(logging.ERROR):
            text = await reply(await world.generate())
    match = re.search(r"error id `([0-9a-f]{8})`", text)
    assert match, text
    assert "secret internal detail" not in text and "Traceback" not in text
    logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info and "secret internal detail" in str(logged[0].exc_info[1])


async def test_a_model_failure_is_reported_on_the_job_without_a_traceback(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    def poison(tasks: object) -> None:
        if any(task.prompt == "poison" for task in tasks):  # type: ignore[attr-defined]
            raise ValueError("tensor shape mismatch deep inside")

    backend = FaultyBackend(tiny_backend(tiny_model_dir), fault=poison)
    async with running_bot(world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend):
        bad = await world.generate(prompt="poison")
        await world.fake.wait_for(lambda: bad.original is not None and "❌" in bad.original.content)
        good = await world.generate(prompt="fine")
        await world.result_of(good)
    assert "error id" in bad.original.content
    assert "tensor shape" not in bad.original.content and "Traceback" not in bad.original.content


async def test_a_job_that_cannot_be_recorded_is_not_left_running(
    world: World, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:

        async def disk_error(*args: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(bot.store.journal, "add", disk_error)
        interaction = await world.generate()
        await world.fake.wait_for(lambda: interaction.original is not None and "❌" in interaction.original.content)
        assert "error id" in interaction.original.content and "disk I/O" not in interaction.original.content
        assert bot.engine.jobs() == [] and bot.pipeline.tickets() == []
        monkeypatch.undo()
        assert (await (await world.generate()).wait_callback()).type == 5  # and the bot goes on


async def test_duration_ranges_follow_the_deployments_cap(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    """JAMGEN_MAX_DURATION past the model's 30 s window: /generate and max-duration offer up to it, no more."""
    async with running_bot(world.fake, tiny_model_dir, tmp_path, engine={"max_duration": 75}):
        assert "75 s" in await settings(world, world.mod, "max-duration", seconds=75)
        assert "Saved" in await settings(world, world.mod, "max-duration", seconds=40)
    generate = next(c for c in world.fake.commands["global"] if c["name"] == "generate")
    duration = next(option for option in generate["options"] if option["name"] == "duration")
    assert (duration["min_value"], duration["max_value"]) == (1, 75)
    jamgen = next(c for c in world.fake.commands["global"] if c["name"] == "jamgen")
    (group,) = jamgen["options"]
    max_duration = next(option for option in group["options"] if option["name"] == "max-duration")
    assert max_duration["options"][0]["max_value"] == 75
