"""kill -9 of the whole bot, then a start: every job is delivered once (for real, in processes).

The bot is killed during generation, and between a result's upload and its journal entry (``tests.crashing_bot``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from bot.journal import State
from tests.bot_harness import TOKEN, World, job_of, journal_of
from tests.fakes.discord import FakeInteraction

REPO = Path(__file__).resolve().parents[1]


async def start_bot(world: World, model_dir: Path, data_dir: Path, module: str = "bot") -> asyncio.subprocess.Process:
    """``python -m <module>`` against the fake, on the tiny model; its output is piped (read it at the end)."""
    env = {
        **os.environ, "DISCORD_TOKEN": TOKEN, "DISCORD_API_BASE_URL": world.fake.base_url,
        "DISCORD_GATEWAY_URL": world.fake.gateway_url, "MUSICGEN_MODEL": str(model_dir), "JAMGEN_DEVICE": "cpu",
        "JAMGEN_DATA_DIR": str(data_dir), "JAMGEN_EDIT_INTERVAL": "0.2", "JAMGEN_PROGRESS_INTERVAL": "0.1",
        "PYTHONPATH": str(REPO),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, cwd=data_dir.parent, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )


def status(interaction: FakeInteraction) -> str:
    return interaction.original.content if interaction.original is not None else ""


async def test_kill_9_mid_generation_then_restart_delivers_every_job_exactly_once(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = await start_bot(world, tiny_model_dir, data_dir)
    await world.fake.wait_until_ready(timeout=60)
    interactions = [
        await world.generate(user=user, prompt=f"{user.name} {n}", duration=10)
        for user in (world.alice, world.bob) for n in (1, 2)
    ]
    await world.fake.wait_for(lambda: any("generating" in status(i) for i in interactions), timeout=120)
    first.kill()  # SIGKILL: no clean-up at all
    await first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not [m for m in world.fake.messages if m.attachments]  # killed before anything was posted

    identifies = world.fake.gateway.stats.identifies
    second = await start_bot(world, tiny_model_dir, data_dir)
    try:
        await world.fake.wait_for(lambda: world.fake.gateway.stats.identifies > identifies, timeout=60)
        await world.fake.wait_for(lambda: all("posted" in status(i) for i in interactions), timeout=180)
    finally:
        second.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(second.communicate(), 60)
    assert second.returncode == 0, output.decode()

    posts = [m for m in world.fake.messages if m.attachments]
    job_ids = [m.embeds[0]["footer"]["text"].split()[1] for m in posts]
    assert len(job_ids) == len(set(job_ids)) == 4  # each delivered, none twice
    assert sorted(m.embeds[0]["description"] for m in posts) == ["alice 1", "alice 2", "bob 1", "bob 2"]
    assert any("restarted" in edit.get("content", "") for i in interactions for edit in i.original.edits)


@pytest.mark.timeout(600)
async def test_kill_9_between_the_upload_and_the_journal_then_restart_posts_it_exactly_once(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = await start_bot(world, tiny_model_dir, data_dir, module="tests.crashing_bot")
    await world.fake.wait_until_ready(timeout=120)
    interaction = await world.generate(prompt="uploaded, then killed")
    output, _ = await asyncio.wait_for(first.communicate(), 180)
    assert first.returncode == -signal.SIGKILL, output.decode()
    assert "SIGKILL before the journal hears of it" in output.decode()
    (post,) = [m for m in world.fake.messages if m.attachments]
    async with journal_of(data_dir) as store:  # the crash's window: posted, journaled as still delivering
        record = await store.journal.get(job_of(post))
    assert record is not None and (record.state, record.message_id) == (State.DELIVERING, None)

    reads = len([r for r in world.fake.requests if r.route == "GET /channels/{channel_id}/messages"])
    second = await start_bot(world, tiny_model_dir, data_dir)
    try:
        await world.fake.wait_for(lambda: "posted" in status(interaction), timeout=180)
    finally:
        second.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(second.communicate(), 60)
    assert second.returncode == 0, output.decode()

    assert [m for m in world.fake.messages if m.attachments] == [post]  # found in the channel, not posted again
    assert len([r for r in world.fake.requests if r.route == "GET /channels/{channel_id}/messages"]) > reads
    async with journal_of(data_dir) as store:
        record = await store.journal.get(job_of(post))
        events = await store.journal.events(job_of(post))
    assert record is not None and record.state is State.DELIVERED
    assert events[-1][0] == "delivered" and events[-1][2] == "found posted after a restart"
