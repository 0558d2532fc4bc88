"""Shards: two bot processes, each running one shard of two (``JAMGEN_SHARD_IDS`` of ``JAMGEN_SHARD_COUNT``),
against one fake Discord and one Redis, with a worker in this process.

Discord sends each guild's interactions to the shard ``(guild_id >> 22) % shard_count``; the bot that holds it
answers, its journal follows the job, and it posts the track. Only the process that runs shard 0 syncs the
commands (the command hash in Redis would hide a second sync, so shard 1's process starts first).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.app import JamBot, ShardedJamBot, create_bot
from bot.journal import State
from bot.settings import BotSettings
from generation.backends.base import Backend
from generation.redis import RedisJobs
from generation.redis.settings import RedisSettings
from tests.bot_harness import TOKEN, assert_kept_to_the_api, engine_settings, job_of, running_bot
from tests.fakes.discord import FakeChannel, FakeDiscord, FakeGuild, FakeInteraction, FakeMessage, FakeUser
from tests.redis_helpers import serving, until
from tests.redis_server import RedisServer

SHARD_COUNT = 2
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Place:
    """A guild on one shard, with a channel to jam in."""

    shard_id: int
    guild: FakeGuild
    channel: FakeChannel


def place_on(fake: FakeDiscord, shard_id: int, user: FakeUser) -> Place:
    guild = fake.add_guild(f"guild on shard {shard_id}", shard=(shard_id, SHARD_COUNT))
    guild.add_member(user)
    return Place(shard_id, guild, guild.add_channel("jam"))


@asynccontextmanager
async def shard_process(fake: FakeDiscord, server: RedisServer, model_dir: Path, data_dir: Path, shard_id: int
                        ) -> AsyncIterator[JamBot]:
    """A bot process that runs shard ``shard_id`` only, on Redis under its own name and data dir."""
    redis = RedisSettings(url=server.url, bot_name=f"bot-shard-{shard_id}", heartbeat=0.2,  # type: ignore[call-arg]
                          reclaim_after=2.0)
    async with running_bot(fake, model_dir, data_dir / f"shard-{shard_id}", redis=redis,
                           shard_count=SHARD_COUNT, shard_ids=[shard_id]) as bot:
        yield bot


def posts_answering(fake: FakeDiscord, interaction: FakeInteraction) -> list[FakeMessage]:
    return [m for m in fake.messages if m.attachments and m.interaction_id == interaction.id]


async def jam_in_each(fake: FakeDiscord, user: FakeUser, places: list[Place], jobs: RedisJobs, backend: Backend,
                      model_dir: Path, timeout: float) -> list[FakeInteraction]:
    """A /generate in each place, each deferred, then a worker here until every one is answered with a post."""
    interactions = [
        await fake.send_command("generate", {"prompt": f"jam on shard {place.shard_id}", "duration": 2},
                                user=user, guild=place.guild, channel=place.channel)
        for place in places
    ]
    for interaction in interactions:
        assert (await interaction.wait_callback()).type == 5
    async with serving(jobs, backend, model_dir):
        await fake.wait_for(lambda: all(posts_answering(fake, i) for i in interactions), timeout=timeout)
    return interactions


async def delivered_by(bot: JamBot, job_id: str) -> bool:
    record = await bot.store.journal.get(job_id)
    return record is not None and record.state is State.DELIVERED


async def test_two_shard_processes_each_answer_their_own_guilds_and_only_shard_0_syncs(
    redis_server: RedisServer, redis_jobs: RedisJobs, tiny_loaded_backend: Backend, tiny_model_dir: Path,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.app")
    async with FakeDiscord() as fake, AsyncExitStack() as stack:
        alice = fake.add_user("alice")
        places = [place_on(fake, shard_id, alice) for shard_id in range(SHARD_COUNT)]
        # shard 1's process first: had it synced, the PUT would come before shard 0's process is up
        second = await stack.enter_async_context(shard_process(fake, redis_server, tiny_model_dir, tmp_path, 1))
        assert fake.command_puts == 0, "the process without shard 0 synced the commands"
        first = await stack.enter_async_context(shard_process(fake, redis_server, tiny_model_dir, tmp_path, 0))
        assert fake.command_puts == 1
        bots = [first, second]
        assert all(isinstance(bot, ShardedJamBot) for bot in bots)
        assert fake.gateway.stats.identified == [(1, SHARD_COUNT), (0, SHARD_COUNT)]
        assert [[guild.id for guild in bot.guilds] for bot in bots] == [[place.guild.id] for place in places]

        interactions = await jam_in_each(fake, alice, places, redis_jobs, tiny_loaded_backend, tiny_model_dir, 60)
        job_ids = [job_of(posts_answering(fake, interaction)[0]) for interaction in interactions]
        for bot, other, job_id in zip(bots, reversed(bots), job_ids, strict=True):
            await until(lambda: delivered_by(bot, job_id))  # noqa: B023
            assert await other.store.journal.get(job_id) is None, "the other shard's process saw the job"

    for place, interaction in zip(places, interactions, strict=True):
        [post] = posts_answering(fake, interaction)
        assert post.channel_id == place.channel.id
    assert len({m.id for m in fake.messages if m.attachments}) == SHARD_COUNT  # each track posted once
    syncs = [request.route for request in fake.requests if request.method == "PUT"]
    assert syncs == ["PUT /applications/{application_id}/commands"] and fake.command_puts == 1
    assert "shards [1] of 2: commands are synced by the process that runs shard 0" in caplog.text
    assert_kept_to_the_api(fake)


@asynccontextmanager
async def shard_os_process(fake: FakeDiscord, server: RedisServer, model_dir: Path, data_dir: Path, shard_id: int
                           ) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m bot`` running shard ``shard_id`` only; stopped with SIGTERM, and checked to exit cleanly."""
    env = {
        **os.environ, "DISCORD_TOKEN": TOKEN, "DISCORD_API_BASE_URL": fake.base_url,
        "DISCORD_GATEWAY_URL": fake.gateway_url, "MUSICGEN_MODEL": str(model_dir), "JAMGEN_DEVICE": "cpu",
        "JAMGEN_DATA_DIR": str(data_dir / f"shard-{shard_id}"), "PYTHONPATH": str(REPO), "REDIS_URL": server.url,
        "JAMGEN_BOT_NAME": f"bot-shard-{shard_id}", "JAMGEN_SHARD_COUNT": str(SHARD_COUNT),
        "JAMGEN_SHARD_IDS": f"[{shard_id}]", "HF_HUB_OFFLINE": "1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=data_dir, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 60)
        log = output.decode(errors="replace")
        assert process.returncode == 0, log
        assert "Traceback" not in log and TOKEN not in log, log


async def test_two_shard_os_processes_each_answer_their_own_guild(
    redis_server: RedisServer, redis_jobs: RedisJobs, tiny_loaded_backend: Backend, tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """The same as above with ``python -m bot`` processes: which one took a job is the inbox its end goes to."""
    async with FakeDiscord() as fake, AsyncExitStack() as stack:
        alice = fake.add_user("alice")
        places = [place_on(fake, shard_id, alice) for shard_id in range(SHARD_COUNT)]
        for shard_id in (1, 0):  # shard 1's first: it must not sync the commands
            await stack.enter_async_context(shard_os_process(fake, redis_server, tiny_model_dir, tmp_path, shard_id))
            await fake.wait_for(lambda: (shard_id, SHARD_COUNT) in fake.gateway.stats.identified,  # noqa: B023
                                timeout=90)
            assert fake.command_puts == (1 if shard_id == 0 else 0)
        interactions = await jam_in_each(fake, alice, places, redis_jobs, tiny_loaded_backend, tiny_model_dir, 90)
        for place, interaction in zip(places, interactions, strict=True):
            [post] = posts_answering(fake, interaction)
            record = await redis_jobs.job(job_of(post))
            assert record is not None and post.channel_id == place.channel.id
            notify = await redis_jobs.client.hget(redis_jobs.keys.job(record.job_id), "notify")
            assert notify == redis_jobs.keys.notify(f"bot-shard-{place.shard_id}").encode()
    assert fake.command_puts == 1
    assert_kept_to_the_api(fake)


async def test_a_bot_runs_shards_only_when_they_are_set(tiny_model_dir: Path, tmp_path: Path) -> None:
    engine = engine_settings(tiny_model_dir, tmp_path)
    unsharded = create_bot(BotSettings(_env_file=None, token=TOKEN), engine)  # type: ignore[call-arg]
    assert type(unsharded) is JamBot and unsharded.shard_count is None  # one connection, as ever
    settings = BotSettings(_env_file=None, token=TOKEN, shard_count=4, shard_ids=[1, 3])  # type: ignore[call-arg]
    sharded = create_bot(settings, engine)
    assert isinstance(sharded, ShardedJamBot)
    assert (sharded.shard_ids, sharded.shard_count) == ([1, 3], 4)
    with pytest.raises(TypeError, match="create_bot"):
        JamBot(settings, engine)
