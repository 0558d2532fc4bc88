"""/jam through the fake Discord and the tiny model: three members, five sections, a restart in the middle, undo,
export, caps, the idle close, and a jam started from a posted track."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bot.jam.store import blob_name
from generation.backends.base import Backend, GenerationTask
from generation.redis import RedisJobs
from generation.redis.settings import RedisSettings
from generation.splice import codes_of
from tests import audio_files
from tests.bot_harness import World, job_of, running_bot, user_text
from tests.fakes.discord import FakeAttachment, FakeInteraction, FakeMessage, FakeUser
from tests.fakes.threads import delete_thread
from tests.helpers import FaultyBackend, decode, tiny_backend
from tests.redis_helpers import serving
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(300)

SECONDS = 2


async def jam(world: World, sub: str, user: FakeUser, channel: Any, **options: Any) -> FakeInteraction:
    return await world.fake.send_command("jam", options, user=user, guild=world.guild, channel=channel,
                                         subcommands=(sub,))


def thread_of(world: World) -> Any:
    (thread,) = world.guild.threads_of(world.jam.id)
    return thread


async def jam_with_one_section(world: World) -> Any:
    """alice starts a jam in #jam; its thread, once the first section is posted."""
    await jam(world, "start", world.alice, world.jam, prompt="one", seconds=SECONDS)
    await world.fake.wait_for(lambda: world.guild.threads_of(world.jam.id) != [])
    thread = thread_of(world)
    await sections_posted(world, thread.id, 1)
    return thread


def track_message(world: World, thread_id: int) -> FakeMessage | None:
    return next((m for m in world.fake.messages if m.channel_id == thread_id and not m.deleted
                 and m.content.startswith("🎶 The whole track so far")), None)


async def sections_posted(world: World, thread_id: int, count: int, timeout: float = 90) -> FakeMessage:
    await world.fake.wait_for(lambda: (m := track_message(world, thread_id)) is not None
                              and f": {count} sections" in m.content, timeout=timeout)
    message = track_message(world, thread_id)
    assert message is not None
    return message


def authors(message: FakeMessage) -> list[int]:
    return [int(found) for found in re.findall(r"^\*\*\d+\.\*\* <@(\d+)>", message.embeds[0]["description"], re.M)]


def seconds_of(message: FakeMessage) -> float:
    (audio,) = message.attachments
    return decode(audio.data).duration


async def refused(interaction: FakeInteraction, world: World) -> str:
    """A private answer: at once, or after a private deferral."""
    callback = await interaction.wait_callback()
    assert callback.data is not None and callback.data["flags"] & 64
    if callback.type == 5:
        await world.fake.wait_for(lambda: bool(interaction.followups))
    return user_text(interaction)


class HoldPrompt:
    """Holds any batch with ``prompt`` at the backend's door until released: a section in flight at a restart."""

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, tasks: Sequence[GenerationTask]) -> None:
        if any(task.prompt == self.prompt for task in tasks):
            self.reached.set()
            if not self.release.wait(timeout=60):
                raise TimeoutError("the test never released the section")


async def test_a_jam_of_three_members_and_five_sections_with_a_restart(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    carol = world.fake.add_user("carol")
    world.guild.add_member(carol)
    hold = HoldPrompt("four")
    backend = FaultyBackend(tiny_backend(tiny_model_dir), fault=hold)
    async with running_bot(world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend,
                           shutdown_grace=0.2) as bot:
        start = await jam(world, "start", world.alice, world.jam, prompt="one", title="night jam", seconds=SECONDS)
        await world.fake.wait_for(lambda: world.guild.threads_of(world.jam.id) != [])
        thread = thread_of(world)
        await world.fake.wait_for(lambda: start.original is not None and f"<#{thread.id}>" in start.original.content)
        await jam(world, "add", world.bob, thread, prompt="two", seconds=SECONDS)
        third = await jam(world, "add", world.mod, thread, prompt="three", seconds=SECONDS)
        await world.fake.wait_for(lambda: "(three) waits for section 2" in user_text(third))  # while two runs
        await sections_posted(world, thread.id, 3)
        fourth = await jam(world, "add", world.alice, thread, prompt="four", seconds=SECONDS)
        fifth = await jam(world, "add", world.bob, thread, prompt="five", seconds=SECONDS)
        await world.fake.wait_for(lambda: "waits for section 4" in user_text(fifth))
        queue = await world.fake.send_command("queue", user=world.bob, guild=world.guild, channel=thread)
        assert "section 5: five — waits for section 4" in str((await queue.wait_callback()).data)
        await world.fake.wait_for(hold.reached.is_set)
        closing = asyncio.create_task(bot.close())
        await world.fake.wait_for(lambda: fourth.original is not None and "keeps its place" in fourth.original.content)
        hold.release.set()
        await closing
    stopped = track_message(world, thread.id)
    assert stopped is not None and ": 3 sections" in stopped.content

    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:  # the restart: 4 and 5 go on
        message = await sections_posted(world, thread.id, 5)
        ids = [world.alice.id, world.bob.id, world.mod.id, world.alice.id, world.bob.id]
        assert authors(message) == ids
        assert seconds_of(message) == pytest.approx(5 * SECONDS, abs=0.1)
        jam_id = message.embeds[0]["footer"]["text"].split()[1]
        codes = [codes_of(await bot.store.jams.get_blob(jam_id, blob_name(n, "codes"))) for n in range(1, 6)]
        frames = [c.shape[1] for c in codes]
        assert len(set(frames)) == 1 and frames[0] > 0  # each section added its own 2 s, its context left out

        assert "Only <@" in await refused(await jam(world, "undo", carol, thread), world)
        undo = await jam(world, "undo", world.bob, thread)
        await world.fake.wait_for(lambda: "Dropped section 5" in user_text(undo))
        message = await sections_posted(world, thread.id, 4)
        assert authors(message) == ids[:4] and seconds_of(message) == pytest.approx(4 * SECONDS, abs=0.1)

        export = await jam(world, "export", carol, thread)
        await world.fake.wait_for(lambda: any(m.attachments for m in export.followups))
        (exported,) = export.followups
        assert exported.attachments and seconds_of(exported) == pytest.approx(4 * SECONDS, abs=0.1)
        assert f"<@{world.mod.id}>" in exported.content and exported.embeds[0]["title"] == "🎶 night jam"

    async with running_bot(world.fake, tiny_model_dir, tmp_path, jam_idle_hours=0.0005):  # 1.8 s
        await world.fake.wait_for(lambda: any(m.channel_id == thread.id and "This jam has ended" in m.content
                                              for m in world.fake.messages), timeout=30)
        final = next(m for m in world.fake.messages if m.channel_id == thread.id and "has ended" in m.content)
        assert "nothing new" in final.content and seconds_of(final) == pytest.approx(4 * SECONDS, abs=0.1)
        await world.fake.wait_for(lambda: thread.archived)
        late = await jam(world, "add", world.alice, world.jam, prompt="six")
        assert "no open jam" in await refused(late, world)


async def test_sections_wait_their_turn_and_caps_are_stated(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    hold = HoldPrompt("three")  # in flight when the jam ends
    backend = FaultyBackend(tiny_backend(tiny_model_dir), fault=hold)
    async with running_bot(world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend) as bot:
        await bot.store.update_guild(world.guild.id, jam_max_sections=2, jam_max_seconds=12)
        await jam(world, "start", world.alice, world.jam, prompt="one", seconds=SECONDS)
        await world.fake.wait_for(lambda: world.guild.threads_of(world.jam.id) != [])
        thread = thread_of(world)
        again = await jam(world, "start", world.bob, world.jam, prompt="another")
        assert f"<#{thread.id}>" in await refused(again, world)
        long = await jam(world, "add", world.bob, thread, prompt="long", seconds=11)
        assert "caps jams at 12 s" in await refused(long, world)
        await jam(world, "add", world.bob, thread, prompt="two", seconds=SECONDS)
        third = await jam(world, "add", world.mod, thread, prompt="three", seconds=SECONDS)
        assert "cap of 2 sections" in await refused(third, world)
        await sections_posted(world, thread.id, 2)
        await bot.store.update_guild(world.guild.id, jam_max_sections=4)
        await jam(world, "add", world.mod, thread, prompt="three", seconds=SECONDS)
        await world.fake.wait_for(hold.reached.is_set)
        fourth = await jam(world, "add", world.bob, thread, prompt="four", seconds=SECONDS)
        await world.fake.wait_for(lambda: "waits for section 3" in user_text(fourth))
        ended = await jam(world, "end", world.bob, thread)
        assert "host <@" in await refused(ended, world)
        await jam(world, "end", world.alice, thread)
        await world.fake.wait_for(lambda: any("ended by" in m.content for m in world.fake.messages
                                              if m.channel_id == thread.id))
        final = next(m for m in world.fake.messages if m.channel_id == thread.id and "ended by" in m.content)
        assert f"Not made: <@{world.bob.id}>'s four" in final.content
        await world.fake.wait_for(lambda: fourth.original is not None and "was not made" in fourth.original.content)
        hold.release.set()


async def test_a_jam_starts_from_a_posted_track_and_continues_its_codes(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:
        interaction = await world.generate(duration=SECONDS)
        (post,) = await world.result_of(interaction)
        job_id = job_of(post)
        press = await world.fake.press_button(post, f"jamgen:jam:{job_id}", user=world.bob, guild=world.guild)
        await world.fake.wait_for(lambda: world.guild.threads_of(world.jam.id) != [])
        thread = thread_of(world)
        first = await sections_posted(world, thread.id, 1)
        assert authors(first) == [world.alice.id] and first.embeds[0]["fields"][0]["value"] == f"<@{world.bob.id}>"
        await world.fake.wait_for(lambda: f"<#{thread.id}>" in user_text(press))
        await jam(world, "add", world.mod, thread, prompt="and then", seconds=SECONDS)
        second = await sections_posted(world, thread.id, 2)
        assert seconds_of(second) == pytest.approx(2 * SECONDS, abs=0.1)
        jam_id = second.embeds[0]["footer"]["text"].split()[1]
        kept = np.load(tmp_path / "audio" / f"{job_id}.codes.npy")
        section_one = codes_of(await bot.store.jams.get_blob(jam_id, blob_name(1, "codes")))
        np.testing.assert_array_equal(section_one, kept)  # the track's own codes, not re-encoded audio


async def test_without_thread_permission_the_jam_posts_in_the_channel(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    world.jam.refuse_threads = True
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        start = await jam(world, "start", world.alice, world.jam, prompt="one", seconds=SECONDS)
        await world.fake.wait_for(
            lambda: start.original is not None and "Create Public Threads" in start.original.content)
        await sections_posted(world, world.jam.id, 1)
        assert world.guild.threads_of(world.jam.id) == []


async def test_on_redis_a_jam_goes_on_from_another_host(
    world: World, redis_server: RedisServer, redis_jobs: RedisJobs, tiny_loaded_backend: Backend,
    tiny_model_dir: Path, tmp_path: Path,
) -> None:
    """Scaled out, the jam lives in Redis: a bot on another host (a fresh data dir, the same name) takes it over."""
    settings = RedisSettings(url=redis_server.url, bot_name="bot-a", heartbeat=0.2,  # type: ignore[call-arg]
                             reclaim_after=2.0)
    async with serving(redis_jobs, tiny_loaded_backend, tiny_model_dir):
        async with running_bot(world.fake, tiny_model_dir, tmp_path / "host-1", redis=settings):
            await jam(world, "start", world.alice, world.jam, prompt="one", seconds=SECONDS)
            await world.fake.wait_for(lambda: world.guild.threads_of(world.jam.id) != [])
            thread = thread_of(world)
            await jam(world, "add", world.bob, thread, prompt="two", seconds=SECONDS)
            await sections_posted(world, thread.id, 2)
        async with running_bot(world.fake, tiny_model_dir, tmp_path / "host-2", redis=settings):
            await jam(world, "add", world.mod, thread, prompt="three", seconds=SECONDS)
            message = await sections_posted(world, thread.id, 3)
    assert authors(message) == [world.alice.id, world.bob.id, world.mod.id]
    assert seconds_of(message) == pytest.approx(3 * SECONDS, abs=0.1)
    tracks = [m for m in world.fake.messages if m.channel_id == thread.id and m.content.startswith("🎶 The whole")]
    assert len(tracks) == 1  # one track message, edited in place by both hosts


async def test_a_jam_starts_from_an_uploaded_file(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The first section continues the upload's last 10 s (heard at its start); the next continues the jam."""
    upload = FakeAttachment("loop.ogg", None, audio_files.tone(".ogg", 12.0))
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        start = await jam(world, "start", world.alice, world.jam, prompt="over the loop", seconds=SECONDS,
                          audio=upload)
        assert (await start.wait_callback()).type == 5
        await world.fake.wait_for(lambda: world.guild.threads_of(world.jam.id) != [])
        thread = thread_of(world)
        first = await sections_posted(world, thread.id, 1)
        assert seconds_of(first) == pytest.approx(10 + SECONDS, abs=0.1)
        await jam(world, "add", world.bob, thread, prompt="and on", seconds=SECONDS)
        second = await sections_posted(world, thread.id, 2)
        assert seconds_of(second) == pytest.approx(10 + 2 * SECONDS, abs=0.1)
        bad = await jam(world, "start", world.bob, world.other, prompt="x", audio=FakeAttachment(
            "notes.txt", "text/plain", b"la la la"))
        assert "audio file" in await refused(bad, world)


async def test_a_favourite_take_starts_a_jam(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    """/generate variants:2, ⭐ take 2, then "Start a jam" on the offer: the jam's first section is that take."""
    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:
        (post,) = await world.result_of(await world.generate(prompt="ambient pads", variants=2, duration=SECONDS))
        two = post.embeds[1]["footer"]["text"].split()[1]
        pressed = await world.fake.press_button(post, f"jamgen:fav:{two}", user=world.alice, guild=world.guild)
        await world.fake.wait_for(lambda: len(pressed.followups) == 1)
        (offer,) = pressed.followups
        await world.fake.press_button(offer, f"jamgen:jam:{two}", user=world.alice, guild=world.guild)
        await world.fake.wait_for(lambda: world.guild.threads_of(world.jam.id) != [])
        first = await sections_posted(world, thread_of(world).id, 1)
        jam_id = first.embeds[0]["footer"]["text"].split()[1]
        kept = np.load(tmp_path / "audio" / f"{two}.codes.npy")
        np.testing.assert_array_equal(codes_of(await bot.store.jams.get_blob(jam_id, blob_name(1, "codes"))), kept)
        assert seconds_of(first) == pytest.approx(SECONDS, abs=0.1)


async def test_a_jam_whose_thread_was_deleted_closes_and_the_channel_can_jam_again(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        thread = await jam_with_one_section(world)
        world.guild.threads.remove(thread)  # a moderator deleted it
        add = await jam(world, "add", world.bob, world.jam, prompt="two", seconds=SECONDS)
        await world.fake.wait_for(lambda: add.original is not None and "thread to post in was deleted"
                                  in add.original.content, timeout=30)
        again = await jam(world, "start", world.bob, world.jam, prompt="fresh", seconds=SECONDS)
        await world.fake.wait_for(lambda: len(world.guild.threads_of(world.jam.id)) == 1
                                  and world.guild.threads_of(world.jam.id)[0].id != thread.id, timeout=30)
        assert (await again.wait_callback()).type == 5
        await sections_posted(world, world.guild.threads_of(world.jam.id)[0].id, 1)


async def test_a_thread_deleted_with_the_bot_watching_closes_its_jam_at_once(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:
        thread = await jam_with_one_section(world)
        await delete_thread(world.fake, world.guild, thread)  # THREAD_DELETE
        await world.fake.wait_for(lambda: bot.jams.open_in(world.jam.id) is None)
        closed = await bot.jams.store.get(bot.jams.here(thread.id).id)  # as saved
        assert closed is not None and closed.closed_reason == "its thread was deleted"


async def test_a_thread_deleted_while_the_bot_was_away_does_not_block_a_new_jam(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:
        thread = await jam_with_one_section(world)
        world.guild.threads.remove(thread)  # no THREAD_DELETE: the bot learns it on the next /jam start
        assert bot.jams.open_in(world.jam.id) is not None
        again = await jam(world, "start", world.bob, world.jam, prompt="fresh", seconds=SECONDS)
        assert (await again.wait_callback()).type == 5
        await world.fake.wait_for(lambda: len(world.guild.threads_of(world.jam.id)) == 1, timeout=30)
        await sections_posted(world, world.guild.threads_of(world.jam.id)[0].id, 1)
