"""Nothing lost across restarts: the journal, resuming, at-most-once delivery, crash limits, retention."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bot.housekeeping import prune
from bot.journal import State
from bot.recovery import MAX_CRASHES
from tests.bot_harness import World, gated, journal_of, posts_of, running_bot
from tests.fakes.discord import FakeMessage


def job_in(message: FakeMessage) -> str:
    return message.content.split("`")[1]


async def test_every_step_is_journaled_before_the_user_reads_it(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        interaction = await world.generate()
        await world.fake.wait_for(lambda: interaction.original is not None and "`" in interaction.original.content)
        job_id = job_in(interaction.original)
        (post,) = await world.result_of(interaction)
    async with journal_of(tmp_path) as store:
        record = await store.journal.get(job_id)
        events = [state for state, _, _ in await store.journal.events(job_id)]
    assert record is not None and record.state is State.DELIVERED and record.message_id == post.id
    assert events == ["queued", "running", "encoding", "delivering", "delivered"]
    assert record.audio_path is not None and Path(record.audio_path).is_file()


async def test_a_restart_resumes_queued_and_interrupted_jobs_in_order(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    gate, backend = gated(tiny_model_dir)
    async with running_bot(
        world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend, engine={"max_batch": 1},
        shutdown_grace=0.2,
    ) as bot:
        running = await world.generate(prompt="first")
        waiting = await world.generate(user=world.bob, prompt="second")
        await world.fake.wait_for(lambda: waiting.original is not None and "position 1" in waiting.original.content)
        closing = asyncio.create_task(bot.close())
        await world.fake.wait_for(lambda: "keeps its place" in waiting.original.content)
        await world.fake.wait_for(lambda: "keeps its place" in running.original.content)
        gate.open()
        await closing
    assert not [m for m in world.fake.messages if m.attachments]

    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:
        await world.fake.wait_for(lambda: "restarted" in waiting.original.content)
        first, second = await world.result_of(running), await world.result_of(waiting)
        assert [m.embeds[0]["description"] for m in first + second] == ["first", "second"]
        await world.fake.wait_for(lambda: "posted" in running.original.content and "posted" in waiting.original.content)
    assert len([m for m in world.fake.messages if m.attachments]) == 2


async def test_audio_kept_on_disk_is_delivered_after_a_restart(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        interaction = await world.generate(prompt="kept")
        (post,) = await world.result_of(interaction)
    job_id = post.embeds[0]["footer"]["text"].split()[1]
    post.deleted = True  # as if the upload had never happened: nothing in the channel
    async with journal_of(tmp_path) as store:
        await store.journal.move(job_id, State.DELIVERING)
    world.fake.expire_token(interaction)  # and the restart took longer than the token lives
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        await world.fake.wait_for(lambda: len([p for p in posts_of(world, job_id) if not p.deleted]) == 1)
    (again,) = [p for p in posts_of(world, job_id) if not p.deleted]
    assert again.via == "channel" and f"<@{world.alice.id}>" in again.content
    assert again.attachments[0].data == post.attachments[0].data


async def test_a_job_that_keeps_crashing_the_bot_fails_with_a_message(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        (post,) = await world.result_of(await world.generate(prompt="poison"))
    job_id = post.embeds[0]["footer"]["text"].split()[1]
    async with journal_of(tmp_path) as store:  # it was running when the process died, MAX_CRASHES times
        await store.journal.move(job_id, State.RUNNING, audio_path=None, attempts=MAX_CRASHES - 1)
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        await world.fake.wait_for(lambda: any("dropped" in m.content for m in world.fake.messages))
    async with journal_of(tmp_path) as store:
        record = await store.journal.get(job_id)
    assert record is not None and record.state is State.FAILED and "stopped 2 times" in (record.reason or "")
    (told,) = [m for m in world.fake.messages if "dropped" in m.content and m.via == "channel"]
    assert told.content.startswith(f"<@{world.alice.id}>") and told.allowed_mentions["parse"] == []
    assert len(posts_of(world, job_id)) == 1  # not generated again


async def test_retention_forgets_old_finished_jobs_and_their_files(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        (post,) = await world.result_of(await world.generate(prompt="old"))
    job_id = post.embeds[0]["footer"]["text"].split()[1]
    async with journal_of(tmp_path) as store:
        record = await store.journal.get(job_id)
        assert record is not None and record.audio_path is not None
        assert await prune(store, retention_days=1) == 0  # young
        assert await prune(store, retention_days=1, now=time.time() + 2 * 86400) == 1
        assert await store.journal.get(job_id) is None
        assert await store.journal.events(job_id) == []
    assert not Path(record.audio_path).exists()


async def test_jamgen_stats_counts_jobs_by_state(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        await world.result_of(await world.generate(prompt="one"))
        await world.result_of(await world.generate(prompt="two"))
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "jamgen.cli", "stats", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    counts = dict(line.split() for line in result.stdout.splitlines()[1:-1])
    assert counts["delivered"] == "2" and counts["queued"] == "0" and counts["total"] == "2"
    assert "audio kept: 2 files" in result.stdout
