"""Delivery edge cases and the bot's life: an expired token, the upload limit, shutdown, `python -m bot`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.bot_harness import TOKEN, World, gated, running_bot, waveform_of
from tests.helpers import decode

REPO = Path(__file__).resolve().parents[1]


async def test_after_the_token_expires_the_track_goes_to_the_channel_with_a_mention(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    gate, backend = gated(tiny_model_dir)
    async with running_bot(world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend):
        interaction = await world.generate(prompt="slow queue")
        await interaction.wait_callback()
        world.fake.expire_token(interaction)  # as if it had waited 15 minutes in the queue
        gate.open()
        (post,) = await world.result_of(interaction)
    assert post.via == "channel" and post.channel_id == world.jam.id
    assert f"<@{world.alice.id}>" in post.content
    assert [int(user) for user in post.allowed_mentions["users"]] == [world.alice.id]
    assert post.allowed_mentions.get("parse", []) == []
    assert post.custom_ids()  # the buttons come along
    waveform_of(post)  # and the picture


async def test_the_file_fits_the_interactions_upload_limit(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    limit = 40_000  # 4 s of Opus at the default 96 kbps is ~48 KB
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        interaction = await world.fake.send_command(
            "generate", {"prompt": "big", "duration": 4}, user=world.alice, guild=world.guild, channel=world.jam,
            attachment_size_limit=limit,
        )
        (post,) = await world.result_of(interaction)
    attachment = post.attachments[0]  # the audio; its picture follows only when both fit the limit
    assert sum(len(upload.data) for upload in post.attachments) <= limit
    assert abs(decode(attachment.data).duration - 4.0) < 0.05


async def test_shutdown_tells_queued_users_and_finishes_the_running_job(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    gate, backend = gated(tiny_model_dir)
    async with running_bot(
        world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend, engine={"max_batch": 1}
    ) as bot:
        running = await world.generate(prompt="running")
        queued = await world.generate(user=world.bob, prompt="queued")
        await world.fake.wait_for(lambda: queued.original is not None and "position 1" in queued.original.content)
        closing = asyncio.create_task(bot.close())
        await world.fake.wait_for(lambda: "restarting" in queued.original.content)
        refused = await world.generate(user=world.mod, prompt="too late")
        assert "restarting" in str((await refused.wait_callback()).data)
        gate.open()
        (post,) = await world.result_of(running)
        await closing
    assert post.embeds[0]["description"] == "running"
    assert backend.batches == [["running"]]


async def test_python_m_bot_connects_and_stops_cleanly_on_sigterm(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ, "DISCORD_TOKEN": TOKEN, "DISCORD_API_BASE_URL": world.fake.base_url,
        "DISCORD_GATEWAY_URL": world.fake.gateway_url, "MUSICGEN_MODEL": str(tiny_model_dir),
        "JAMGEN_DEVICE": "cpu", "JAMGEN_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await world.fake.wait_until_ready(timeout=60)
        interaction = await world.generate(prompt="from a real process")
        await world.result_of(interaction, timeout=90)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    log = output.decode()
    assert process.returncode == 0, log
    assert "Traceback" not in log
    assert TOKEN not in log
