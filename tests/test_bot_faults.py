"""Faults the bot survives: Discord 5xx / 429 / 413, a crashing worker, out-of-memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.journal import State
from tests.bot_harness import World, job_of, running_bot, state_reached
from tests.helpers import FaultyBackend, oom_over, tiny_backend

FOLLOW_UP = "POST /webhooks/{application_id}/{token}"
CHANNEL_POST = "POST /channels/{channel_id}/messages"


async def test_a_413_re_encodes_the_track_smaller(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        (normal,) = await world.result_of(await world.generate(prompt="same", seed=3, duration=4))
        world.fake.fail_next(FOLLOW_UP, 413)  # the server's upload limit dropped meanwhile
        (smaller,) = await world.result_of(await world.generate(prompt="same", seed=3, duration=4))
    assert len(smaller.attachments[0].data) <= 0.65 * len(normal.attachments[0].data)
    refused = [r for r in world.fake.requests if r.route == FOLLOW_UP and r.status == 413]
    assert len(refused) == 1


async def test_429_and_5xx_on_upload_are_retried_without_duplicates(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        world.fake.fail_next(FOLLOW_UP, 429, retry_after=0.2)
        world.fake.fail_next(FOLLOW_UP, 502, times=1)
        (post,) = await world.result_of(await world.generate(prompt="flaky"))
    assert post.via == "webhook"
    statuses = [r.status for r in world.fake.requests if r.route == FOLLOW_UP]
    assert 429 in statuses and 502 in statuses and statuses[-1] == 200
    assert len([m for m in world.fake.messages if m.attachments]) == 1


async def test_a_channel_post_retries_server_errors_with_backoff(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """discord.py does not retry a 503 on bot routes: the bot's own backoff does."""
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        interaction = await world.generate(prompt="late")
        await interaction.wait_callback()
        world.fake.expire_token(interaction)
        world.fake.fail_next(CHANNEL_POST, 503, times=2)
        (post,) = await world.result_of(interaction, timeout=30)
    assert post.via == "channel"
    statuses = [r.status for r in world.fake.requests if r.route == CHANNEL_POST]
    assert statuses == [503, 503, 200]


@pytest.mark.parametrize(("route", "status"), [(FOLLOW_UP, 502), (CHANNEL_POST, 500)])
async def test_a_5xx_for_an_upload_discord_made_does_not_post_it_twice(
    world: World, tiny_model_dir: Path, tmp_path: Path, route: str, status: int
) -> None:
    """Discord posts the track, then answers 5xx (its edge gave up on its backend): discord.py would send it again
    by itself (it retries these); the bot looks for the card in the channel and finds it instead."""
    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:
        interaction = await world.generate(prompt="lost answer")
        await interaction.wait_callback()
        if route == CHANNEL_POST:
            world.fake.expire_token(interaction)
        world.fake.fail_next(route, status, after_effect=True)
        (post,) = await world.result_of(interaction)
        record = await state_reached(bot.store, job_of(post), State.DELIVERED)
    assert record.message_id == post.id  # the post that was found is the delivery
    assert [r.status for r in world.fake.requests if r.route == route and r.files] == [status]
    assert [m for m in world.fake.messages if m.attachments] == [post]
    assert any(r.route == "GET /channels/{channel_id}/messages" for r in world.fake.requests)


async def test_a_worker_crash_is_retried_then_reported_and_the_bot_goes_on(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    crashes: dict[str, int] = {}

    def crash(tasks: object) -> None:
        for task in tasks:  # type: ignore[attr-defined]
            if task.prompt.startswith("crash"):
                crashes[task.prompt] = crashes.get(task.prompt, 0) + 1
                if task.prompt == "crash always" or crashes[task.prompt] == 1:
                    raise RuntimeError("worker thread died")

    backend = FaultyBackend(tiny_backend(tiny_model_dir), fault=crash)
    async with running_bot(world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend):
        once = await world.generate(prompt="crash once")
        await world.result_of(once)
        always = await world.generate(user=world.bob, prompt="crash always")
        await world.fake.wait_for(lambda: always.original is not None and "❌" in always.original.content)
        after = await world.generate(user=world.bob, prompt="fine")
        await world.result_of(after)
    assert crashes == {"crash once": 2, "crash always": 2}
    assert "error id" in always.original.content and "worker thread died" not in always.original.content


async def test_out_of_memory_splits_the_batch_and_every_variation_arrives(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    backend = FaultyBackend(tiny_backend(tiny_model_dir), fault=oom_over(1))
    async with running_bot(world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend):
        (post,) = await world.result_of(await world.generate(prompt="big band"))
        job_id = post.embeds[0]["footer"]["text"].split()[1]
        pressed = await world.fake.press_button(post, f"jamgen:vary:{job_id}", user=world.alice, guild=world.guild)
        posts = await world.result_of(pressed, count=3)
    assert len(posts) == 3
    assert [len(batch) for batch in backend.batches[1:]] == [3, 1, 2, 1, 1]  # 3 -> 1 + 2 -> 1 + 1
    assert backend.freed >= 2


async def test_a_full_disk_is_reported_to_the_user_and_the_bot_goes_on(
    world: World, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from bot import pipeline

    real_save = pipeline.save_audio

    async def full(*args: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        monkeypatch.setattr(pipeline, "save_audio", full)
        failed = await world.generate(prompt="too much")
        await world.fake.wait_for(lambda: failed.original is not None and "❌" in failed.original.content)
        monkeypatch.setattr(pipeline, "save_audio", real_save)
        await world.result_of(await world.generate(user=world.bob, prompt="after"))
    assert "disk is full" in failed.original.content and "error id" in failed.original.content
