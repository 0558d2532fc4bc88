"""The bot on Redis (``REDIS_URL``): it loads no model; a worker makes the tracks; each is posted once.

A real JamBot against the fake Discord and a private redis-server; the worker is a
:class:`RedisWorker` on the tiny model in the same process (``tests/test_redis_processes.py``
runs workers as processes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis

from bot.app import JamBot
from bot.journal import State
from bot.shared import SharedState
from bot.store import GuildSettings
from generation.backends.base import Backend
from generation.jobs import JobRequest
from generation.redis import RedisJobs, registry
from generation.redis.inbox import GROUP
from generation.redis.registry import WorkerInfo
from generation.redis.remote import RemoteEngine
from generation.redis.settings import RedisSettings
from generation.settings import EngineSettings
from tests import audio_files
from tests.bot_harness import World, job_of, journal_of, posts_of, running_bot, user_text, waveform_of
from tests.fakes.discord import FakeAttachment, FakeInteraction
from tests.helpers import decode
from tests.redis_helpers import serving, until
from tests.redis_server import RedisServer

BOT = "bot-a"
REPO = Path(__file__).resolve().parent.parent


def redis_settings(server: RedisServer, name: str = BOT) -> RedisSettings:
    return RedisSettings(url=server.url, bot_name=name, heartbeat=0.2, reclaim_after=2.0)  # type: ignore[call-arg]


@asynccontextmanager
async def bot_on(world: World, server: RedisServer, model_dir: Path, data_dir: Path, **settings: object
                 ) -> AsyncIterator[JamBot]:
    async with running_bot(world.fake, model_dir, data_dir, redis=redis_settings(server), **settings) as bot:
        assert isinstance(bot.engine, RemoteEngine)
        yield bot


async def made_while_no_bot_runs(
    world: World, server: RedisServer, jobs: RedisJobs, backend: Backend, model_dir: Path, data_dir: Path
) -> tuple[FakeInteraction, str]:
    """A /generate queued by a bot that then stops; a worker makes the track while no bot runs."""
    async with bot_on(world, server, model_dir, data_dir):
        interaction = await world.generate(prompt="made while away")
        assert (await interaction.wait_callback()).type == 5
    [job_id] = await jobs.ordered(str(model_dir))
    async with serving(jobs, backend, model_dir):
        await until(lambda: _state_is(jobs, job_id, "done"))
    assert posts_of(world, job_id) == []
    return interaction, job_id


async def inbox_left(client: Redis, name: str = BOT) -> tuple[int, int]:
    """(entries in the bot's inbox, entries read and not acknowledged)."""
    stream = RedisJobs(client).keys.notify(name)
    pending = await client.xpending(stream, GROUP)
    return await client.xlen(stream), int(pending["pending"])


async def test_a_track_is_made_by_a_worker_and_posted_once(
    world: World, redis_server: RedisServer, redis_jobs: RedisJobs, tiny_loaded_backend: Backend,
    tiny_model_dir: Path, tmp_path: Path,
) -> None:
    async with bot_on(world, redis_server, tiny_model_dir, tmp_path) as bot:
        assert bot._warm_up is None, "a bot on Redis loads no model"
        interaction = await world.generate(prompt="redis jam")
        assert (await interaction.wait_callback()).type == 5
        async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir):
            [post] = await world.result_of(interaction)
        job_id = job_of(post)
        await until(lambda: _delivered(tmp_path, job_id))
        await until(lambda: _inbox_empty(redis_jobs.client))
    waveform_of(post)  # drawn by the bot from the worker's bytes, as in process
    record = await redis_jobs.job(job_id)
    assert record is not None and record.state == "done" and record.worker is not None
    assert record.meta is not None and f'"channel_id":{world.jam.id}' in record.meta
    assert len(posts_of(world, job_id)) == 1


async def test_a_user_s_limits_are_shared_with_another_bot_process(
    world: World, redis_server: RedisServer, tiny_model_dir: Path, tmp_path: Path,
) -> None:
    """Another bot process (a real one) admits two of alice's requests; this one refuses her third (at most 2 at
    once) and still serves bob; the other process refuses her third too."""
    async with bot_on(world, redis_server, tiny_model_dir, tmp_path):
        key = f"{world.guild.id}:{world.alice.id}"
        assert other_bot_admits(redis_server, tiny_model_dir, key, str(world.alice.id), 2).returncode == 0
        refused = await world.generate(prompt="a third")
        callback = await refused.wait_callback()
        assert callback.type == 4 and "You already have 2 jobs" in user_text(refused)
        bob = await world.generate(user=world.bob, prompt="bob's")
        assert (await bob.wait_callback()).type == 5
        again = other_bot_admits(redis_server, tiny_model_dir, key, str(world.alice.id), 1)
        assert again.returncode == 3 and "You already have 2 jobs" in again.stderr


def other_bot_admits(server: RedisServer, model_dir: Path, key: str, owner: str, count: int
                     ) -> subprocess.CompletedProcess[str]:
    """``count`` admissions by another bot process (``tests/admitting_bot.py``)."""
    return subprocess.run(
        [sys.executable, "-m", "tests.admitting_bot", server.url, str(model_dir), key, owner, str(count)],
        cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )


async def test_a_track_made_while_the_bot_was_down_is_posted_when_it_is_back(
    world: World, redis_server: RedisServer, redis_jobs: RedisJobs, tiny_loaded_backend: Backend,
    tiny_model_dir: Path, tmp_path: Path,
) -> None:
    interaction, job_id = await made_while_no_bot_runs(
        world, redis_server, redis_jobs, tiny_loaded_backend, tiny_model_dir, tmp_path
    )
    async with bot_on(world, redis_server, tiny_model_dir, tmp_path):
        await world.result_of(interaction)
        await until(lambda: _inbox_empty(redis_jobs.client))
    assert len(posts_of(world, job_id)) == 1


async def test_a_bot_without_the_journal_posts_from_the_job_s_record_once(
    world: World, redis_server: RedisServer, redis_jobs: RedisJobs, tiny_loaded_backend: Backend,
    tiny_model_dir: Path, tmp_path: Path,
) -> None:
    """The bot comes back on another host (a fresh data dir): the job's record in Redis says where to post.
    Its end is read twice (as after a crash between the post and the acknowledgement): posted once."""
    interaction, job_id = await made_while_no_bot_runs(
        world, redis_server, redis_jobs, tiny_loaded_backend, tiny_model_dir, tmp_path / "host-1"
    )
    async with bot_on(world, redis_server, tiny_model_dir, tmp_path / "host-2"):
        await world.result_of(interaction)
        await until(lambda: _inbox_empty(redis_jobs.client))
    stream = redis_jobs.keys.notify(BOT)
    await redis_jobs.client.xadd(stream, {"job": job_id, "kind": "finished"})  # the same end, once more
    async with bot_on(world, redis_server, tiny_model_dir, tmp_path / "host-3"):
        await until(lambda: _inbox_empty(redis_jobs.client))
    assert len(posts_of(world, job_id)) == 1


async def test_three_takes_count_as_one_request_against_the_limits_as_in_process(
    world: World, redis_server: RedisServer, redis_jobs: RedisJobs, tiny_loaded_backend: Backend,
    tiny_model_dir: Path, tmp_path: Path,
) -> None:
    """🎲 makes three jobs; with at most 2 requests at once (the default), it is one of them."""
    async with bot_on(world, redis_server, tiny_model_dir, tmp_path) as bot:
        assert bot.pipeline.limits(bot.store.guild(world.guild.id)).max_active == 2
        async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir):
            [post] = await world.result_of(await world.generate(prompt="vary me"))
        pressed = await world.fake.press_button(post, f"jamgen:vary:{job_of(post)}", user=world.alice,
                                                guild=world.guild)
        assert (await pressed.wait_callback()).type == 5
        one_more = await world.generate(prompt="a second request")
        assert (await one_more.wait_callback()).type == 5
        assert await redis_jobs.active(f"{world.guild.id}:{world.alice.id}") == 2
        async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir):
            takes = await world.result_of(pressed, count=3)
            await world.result_of(one_more)
        assert await redis_jobs.active(f"{world.guild.id}:{world.alice.id}") == 0
    assert len({job_of(take) for take in takes}) == 3


async def test_extend_sends_the_clip_through_redis_not_as_a_path(
    world: World, redis_server: RedisServer, redis_jobs: RedisJobs, tiny_loaded_backend: Backend,
    tiny_model_dir: Path, tmp_path: Path,
) -> None:
    """The worker reads the clip from Redis: the bot's copy is gone before the worker takes the job."""
    async with bot_on(world, redis_server, tiny_model_dir, tmp_path / "bot"):
        async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir, data_dir=tmp_path / "worker"):
            first = await world.generate(prompt="funk bass", duration=3, format="wav")
            [post] = await world.result_of(first)
        pressed = await world.fake.press_button(post, f"jamgen:extend:{job_of(post)}", user=world.alice,
                                                guild=world.guild)
        assert (await pressed.wait_callback()).type == 5
        [job_id] = await redis_jobs.ordered(str(tiny_model_dir))
        record = await redis_jobs.job(job_id)
        assert record is not None and '"continue_from":"redis-input:' in record.request_json
        for kept in (tmp_path / "bot" / "audio").iterdir():
            kept.unlink()
        async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir, data_dir=tmp_path / "worker"):
            [longer] = await world.result_of(pressed)
    assert abs(decode(longer.attachments[0].data).duration - 6.0) < 0.05  # the whole clip, then 3 s more
    assert list((tmp_path / "worker" / "inputs").iterdir()) == [], "the worker keeps no input once the job ended"


async def test_an_uploaded_file_is_continued_by_a_worker_that_gets_its_decoded_part_through_redis(
    world: World, redis_server: RedisServer, redis_jobs: RedisJobs, tiny_loaded_backend: Backend,
    tiny_model_dir: Path, tmp_path: Path,
) -> None:
    """The bot decodes the upload into its data dir; the worker, with a data dir of its own, reads it from Redis."""
    upload = FakeAttachment("riff.flac", "audio/flac", audio_files.tone(".flac", 6.0))
    async with bot_on(world, redis_server, tiny_model_dir, tmp_path / "bot"):
        interaction = await world.generate(prompt="surf rock", duration=2, format="wav", audio=upload)
        assert (await interaction.wait_callback()).type == 5
        await until(lambda: _queued(redis_jobs, tiny_model_dir))
        [job_id] = await redis_jobs.ordered(str(tiny_model_dir))
        record = await redis_jobs.job(job_id)
        assert record is not None and '"continue_from":"redis-input:' in record.request_json
        for kept in (tmp_path / "bot" / "uploads").iterdir():
            kept.unlink()
        async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir, data_dir=tmp_path / "worker"):
            [post] = await world.result_of(interaction)
    assert abs(decode(post.attachments[0].data).duration - 8.0) < 0.05  # the 6 s it heard, then 2 s more
    assert {f["name"]: f["value"] for f in post.embeds[0]["fields"]}["Audio in"] == (
        "continues the last 6 s of riff.flac (0:00–0:06)"
    )
    assert list((tmp_path / "worker" / "inputs").iterdir()) == [], "the worker keeps no input once the job ended"


async def _queued(jobs: RedisJobs, model_dir: Path) -> bool:
    return len(await jobs.ordered(str(model_dir))) == 1


async def test_guild_settings_and_the_command_hash_are_shared_through_redis(
    world: World, redis_server: RedisServer, redis_jobs: RedisJobs, tiny_model_dir: Path, tmp_path: Path,
) -> None:
    async with bot_on(world, redis_server, tiny_model_dir, tmp_path) as bot:
        assert await redis_jobs.client.hget(redis_jobs.keys.prefix + "meta", "commands_hash") is not None
        other_process = SharedState(redis_jobs.client, redis_jobs.keys)
        await other_process.save(world.guild.id, GuildSettings(max_duration=5))

        async def applied() -> bool:
            return bot.store.guild(world.guild.id).max_duration == 5

        await until(applied, timeout=10)
        interaction = await world.generate(prompt="too long here", duration=10)
        assert (await interaction.wait_callback()).type == 4
        assert "between 1 and 5 seconds" in user_text(interaction)


async def test_queue_and_cancel_see_every_bot_s_jobs_in_redis(
    world: World, redis_server: RedisServer, redis_jobs: RedisJobs, tiny_model_dir: Path, tmp_path: Path,
) -> None:
    """Another bot process's job is first in the queue; alice's two follow; she cancels her latest."""
    other = RemoteEngine(EngineSettings(model=str(tiny_model_dir)), redis_jobs, name="bot-b",  # type: ignore[call-arg]
                         models=[str(tiny_model_dir)])
    elsewhere = JobRequest.create(prompt="elsewhere", model=str(tiny_model_dir), duration=1.0, owner="42")
    async with bot_on(world, redis_server, tiny_model_dir, tmp_path) as bot:
        limits = bot.pipeline.limits(bot.store.guild(world.guild.id))
        await other.admit([elsewhere], limits=limits, key="7:42", exempt=False)
        asks = [await world.generate(prompt=prompt) for prompt in ("first", "second")]
        for ask in asks:
            assert (await ask.wait_callback()).type == 5
        await world.fake.wait_for(lambda: "position 3 of 3" in (asks[1].original.content if asks[1].original else ""))
        listing = await world.fake.send_command("queue", {}, user=world.alice, guild=world.guild, channel=world.jam)
        await listing.wait_callback()
        text = user_text(listing)
        assert "3 waiting" in text and "first — position 2" in text and "second — position 3" in text
        mine = await world.fake.send_command("cancel", {}, user=world.alice, guild=world.guild, channel=world.jam)
        await mine.wait_callback()
        assert "Cancelled job" in user_text(mine)
        await world.fake.wait_for(lambda: "cancelled by you" in asks[1].original.content)  # type: ignore[union-attr]
    job_ids = await redis_jobs.ordered(str(tiny_model_dir))
    assert len(job_ids) == 2, "the cancelled job left the queue in Redis"


async def test_etas_use_the_throughput_of_every_live_worker(
    world: World, redis_server: RedisServer, redis_jobs: RedisJobs, tiny_model_dir: Path, tmp_path: Path,
) -> None:
    """Two workers of one row each, 1 audio-s/s each: the two 8 s jobs ahead run side by side, so the third
    starts in 8 s (one worker alone would make it 16)."""
    for name in ("w1", "w2"):
        info = WorkerInfo(name=name, model=str(tiny_model_dir), rows=1, rows_in_use=0, batching="continuous",
                          throughput=1.0, steps_per_second=50.0, jobs_done=0, jobs_failed=0, started=0.0,
                          host="gpu", pid=1)
        await registry.publish(redis_jobs.client, redis_jobs.keys, info, ttl=60.0)
    async with bot_on(world, redis_server, tiny_model_dir, tmp_path, engine={"max_batch": 8}) as bot:
        await until(lambda: _capacity_is(bot, 2))
        for user in (world.bob, world.mod):
            assert (await (await world.generate(user=user, prompt="ahead", duration=8)).wait_callback()).type == 5
        third = await world.generate(prompt="third", duration=4)
        assert (await third.wait_callback()).type == 5
        await world.fake.wait_for(lambda: "starts in ~8 s" in (third.original.content if third.original else ""))


async def test_with_redis_down_a_request_is_refused_with_a_reason(
    world: World, redis_server: RedisServer, tiny_model_dir: Path, tmp_path: Path,
) -> None:
    dead = RedisSettings(url="redis://127.0.0.1:1/0", bot_name=BOT)  # type: ignore[call-arg]
    async with running_bot(world.fake, tiny_model_dir, tmp_path, redis=dead):
        interaction = await world.generate(prompt="nowhere to go")
        callback = await interaction.wait_callback()
    assert callback.type == 4 and "queue is unavailable" in user_text(interaction)


async def test_redis_killed_and_restarted_under_the_bot_loses_no_accepted_job(
    world: World, tiny_loaded_backend: Backend, tiny_model_dir: Path, tmp_path: Path,
) -> None:
    server = RedisServer.launch(tmp_path / "redis")  # this test's own: it kills it
    jobs = RedisJobs(Redis.from_url(server.url))
    try:
        settings = RedisSettings(url=server.url, bot_name=BOT)  # type: ignore[call-arg]
        async with running_bot(world.fake, tiny_model_dir, tmp_path / "bot", redis=settings):
            accepted = await world.generate(prompt="survives")
            assert (await accepted.wait_callback()).type == 5
            server.kill9()
            refused = await world.generate(user=world.bob, prompt="while redis is down")
            assert (await refused.wait_callback()).type == 4
            assert "queue is unavailable" in user_text(refused)
            server.restart()
            async with serving(jobs, tiny_loaded_backend, tiny_model_dir, data_dir=tmp_path / "worker"):
                [post] = await world.result_of(accepted)
        assert len(posts_of(world, job_of(post))) == 1
    finally:
        await jobs.aclose()
        server.stop()


async def _capacity_is(bot: JamBot, rows: int) -> bool:
    assert isinstance(bot.engine, RemoteEngine)
    return bot.engine.throughput.rows == rows and bot.engine.settings.max_batch == rows


async def _delivered(data_dir: Path, job_id: str) -> bool:
    async with journal_of(data_dir) as store:
        record = await store.journal.get(job_id)
    return record is not None and record.state is State.DELIVERED


async def _inbox_empty(client: Redis) -> bool:
    return await inbox_left(client) == (0, 0)


async def _state_is(jobs: RedisJobs, job_id: str, state: str) -> bool:
    record = await jobs.job(job_id)
    return record is not None and record.state == state
