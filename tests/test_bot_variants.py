"""/generate variants:2–4: takes of one prompt in one batch, posted together with numbered buttons to pick a
favourite; through the fake Discord, on the tiny model."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import numpy as np

from bot.journal import SCHEMA, State
from bot.store import Store
from tests.audio_files import tone
from tests.bot_harness import World, gated, journal_of, posts_of, running_bot, state_reached
from tests.fakes.discord import FakeAttachment, FakeMessage
from tests.helpers import FaultyBackend, decode, tiny_backend

EPHEMERAL = 64
WEBHOOK_POST = "POST /webhooks/{application_id}/{token}"


def audio_files(post: FakeMessage) -> list[tuple[str, bytes]]:
    return [(item.filename, item.data) for item in post.attachments if not item.filename.endswith(".png")]


def same_takes(a: FakeMessage, b: FakeMessage) -> bool:
    """Whether two posts carry the same audio, take by take (decoded: an Ogg stream's serial number is random)."""
    ours, theirs = audio_files(a), audio_files(b)
    return len(ours) == len(theirs) and all(
        np.allclose(decode(x).samples, decode(y).samples, atol=1e-4)
        for (_, x), (_, y) in zip(ours, theirs, strict=True)
    )


def jobs_of(post: FakeMessage) -> list[str]:
    """The job id on each card of a post (each footer says ``job <id> · ...``)."""
    return [str(embed["footer"]["text"].split()[1]) for embed in post.embeds]


def seeds_of(post: FakeMessage) -> list[str]:
    return [next(f["value"] for f in embed["fields"] if f["name"] == "Seed") for embed in post.embeds]


async def test_takes_are_one_batch_posted_as_one_message_and_a_seed_gives_them_again(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    backend = FaultyBackend(tiny_backend(tiny_model_dir))
    async with running_bot(world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend):
        first = await world.generate(prompt="dub techno", duration=2, seed=41, variants=3)
        (post,) = await world.result_of(first)
        await world.fake.wait_for(lambda: first.original is not None and first.original.content.count("posted") == 3)
        again = await world.generate(prompt="dub techno", duration=2, seed=41, variants=3)
        (repeat,) = await world.result_of(again)
    assert backend.batches[0] == ["dub techno"] * 3  # one batch
    assert "3 takes of **dub techno**" in first.original.content

    files = audio_files(post)
    names = [f"take-{n}-dub-techno-{seed}.opus" for n, seed in ((1, 41), (2, 42), (3, 43))]
    assert [name for name, _ in files] == names
    assert len({data for _, data in files}) == 3  # three different takes
    assert all(abs(decode(data).duration - 2.0) < 0.05 for _, data in files)
    assert seeds_of(post) == ["`41`", "`42`", "`43`"]
    assert [embed["title"].split(" · ")[0] for embed in post.embeds] == ["Take 1", "Take 2", "Take 3"]
    jobs = jobs_of(post)
    assert len(set(jobs)) == 3
    assert post.custom_ids() == [f"jamgen:fav:{job}" for job in jobs]
    assert [c["label"] for c in post.components[0]["components"]] == ["Take 1", "Take 2", "Take 3"]
    assert f"<@{world.alice.id}>" in post.content and "3 takes are ready" in post.content

    assert [name for name, _ in audio_files(repeat)] == names
    assert same_takes(repeat, post)  # the same seed: the same takes, in the same order
    assert set(jobs_of(repeat)).isdisjoint(jobs)
    async with journal_of(tmp_path) as store:
        records = [await store.journal.get(job) for job in jobs]
    assert [(r.state, r.message_id, r.take) for r in records if r] == [
        (State.DELIVERED, post.id, n) for n in (1, 2, 3)
    ]


async def test_pressing_a_number_marks_the_favourite_for_its_requester_only(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        (post,) = await world.result_of(await world.generate(prompt="ambient pads", variants=2))
        one, two = jobs_of(post)

        stranger = await world.fake.press_button(post, f"jamgen:fav:{two}", user=world.bob, guild=world.guild)
        refusal = await stranger.wait_callback()
        assert refusal.type == 4 and refusal.data is not None and refusal.data["flags"] & EPHEMERAL
        assert "Only" in refusal.data["content"] and "Traceback" not in refusal.data["content"]
        assert "⭐ favourite" not in post.content

        pressed = await world.fake.press_button(post, f"jamgen:fav:{two}", user=world.alice, guild=world.guild)
        assert (await pressed.wait_callback()).type == 7  # the message itself is edited
        await world.fake.wait_for(lambda: len(pressed.followups) == 1)
        assert post.content.endswith("⭐ favourite: take 2")
        assert [embed["title"].startswith("⭐") for embed in post.embeds] == [False, True]
        assert len(audio_files(post)) == 2  # the files stay
        (offer,) = pressed.followups
        assert offer.ephemeral and "Take 2" in offer.content
        assert offer.custom_ids() == [f"jamgen:{action}:{two}" for action in ("regen", "vary", "extend", "jam")]

        moved = await world.fake.press_button(post, f"jamgen:fav:{one}", user=world.alice, guild=world.guild)
        await world.fake.wait_for(lambda: len(moved.followups) == 1)
        assert post.content.endswith("⭐ favourite: take 1") and post.content.count("favourite: take") == 1
        assert [embed["title"].startswith("⭐") for embed in post.embeds] == [True, False]
    async with journal_of(tmp_path) as store:
        marks = [(r.take, r.favourite) for r in await store.journal.takes_of((await store.journal.get(one)).ticket_id)]
    assert marks == [(1, True), (2, False)]


async def test_variants_outside_2_to_4_are_refused(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        for value in (1, 5, -2):  # a client that ignores the declared range
            interaction = await world.fake.send_command(
                "generate", user=world.alice, guild=world.guild, channel=world.jam,
                raw_options=[{"name": "prompt", "type": 3, "value": "lofi"},
                             {"name": "variants", "type": 4, "value": value}],
            )
            callback = await interaction.wait_callback()
            assert callback.type == 4 and callback.data is not None and callback.data["flags"] & EPHEMERAL
            assert "variants: must be between 2 and 4" in callback.data["content"]
    generate = next(c for c in world.fake.commands["global"] if c["name"] == "generate")
    variants = next(option for option in generate["options"] if option["name"] == "variants")
    assert (variants["type"], variants["min_value"], variants["max_value"], variants["required"]) == (4, 2, 4, False)
    assert not [m for m in world.fake.messages if m.attachments]


async def test_takes_count_as_one_request_against_the_limits(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path, user_max_jobs=1, user_rate_count=2) as bot:
        takes = await world.generate(prompt="one", variants=4)  # four jobs, one request: within max 1 at a time
        assert (await takes.wait_callback()).type == 5
        (post,) = await world.result_of(takes)
        assert len(audio_files(post)) == 4
        await world.fake.wait_for(lambda: not bot.pipeline.tickets())  # done: no longer in progress
        second = await world.generate(prompt="two")
        assert (await second.wait_callback()).type == 5
        await world.result_of(second)
        await world.fake.wait_for(lambda: not bot.pipeline.tickets())
        third = await world.generate(prompt="three")
        refusal = await third.wait_callback()
    assert refusal.type == 4 and refusal.data is not None and "You can start 2 jobs every" in refusal.data["content"]


async def test_a_restart_between_takes_posts_every_take_once(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        (post,) = await world.result_of(await world.generate(prompt="kept", seed=7, variants=2))
    one, two = jobs_of(post)
    post.deleted = True  # as if the bot had died before posting: take 1 kept on disk, take 2 not made yet
    async with journal_of(tmp_path) as store:
        await store.journal.move(one, State.DELIVERING)
        await store.journal.move(two, State.QUEUED, audio_path=None)
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        await world.fake.wait_for(lambda: len([p for p in posts_of(world, one) if not p.deleted]) == 1, timeout=60)
    (again,) = [p for p in posts_of(world, one) if not p.deleted]
    assert jobs_of(again) == [one, two] and again.custom_ids() == [f"jamgen:fav:{one}", f"jamgen:fav:{two}"]
    assert audio_files(again)[0] == audio_files(post)[0]  # take 1 from the disk
    assert same_takes(again, post)  # and take 2 made again from its seed
    async with journal_of(tmp_path) as store:
        for job in (one, two):
            await store.journal.move(job, State.DELIVERING)  # posted, but the journal did not hear of it
    async with running_bot(world.fake, tiny_model_dir, tmp_path), journal_of(tmp_path) as store:
        for job in (one, two):
            record = await state_reached(store, job, State.DELIVERED)
            assert record.message_id == again.id
    assert len([p for p in world.fake.messages if p.attachments and not p.deleted]) == 1


async def test_takes_that_cannot_be_posted_together_go_on_their_own_cards(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        world.fake.fail_next(WEBHOOK_POST, 403)  # the joint post is refused (not a retryable error)
        interaction = await world.generate(prompt="split", variants=2)
        posts = await world.result_of(interaction, count=2)
    assert sorted(len(audio_files(p)) for p in posts) == [1, 1]
    assert sorted(p.embeds[0]["title"].split(" · ")[0] for p in posts) == ["Take 1", "Take 2"]
    for p in posts:
        assert p.custom_ids()[0].startswith("jamgen:regen:")


async def test_an_older_journal_file_opens_with_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "jamgen.sqlite3"
    with sqlite3.connect(path) as db:  # the file as the bot wrote it before takes existed
        db.executescript(SCHEMA)
        db.execute(
            "INSERT INTO jobs (job_id, ticket_id, channel_id, user_id, request, state, created_at, updated_at) "
            "VALUES ('0123456789ab', 't1', 1, 2, ?, 'delivered', 0, 0)",
            ('{"prompt": "old", "duration": 2, "model": "m", "seed": 1}',),
        )
    db.close()
    store = Store(path)
    await store.open()
    try:
        record = await store.journal.get("0123456789ab")
        assert record is not None and record.take is None and record.favourite is False
        await store.journal.set_favourite("t1", "0123456789ab")  # not a take: nothing to mark
        assert (await store.journal.get("0123456789ab")).favourite is False  # type: ignore[union-attr]
    finally:
        await store.close()
    reopened = Store(path)
    await reopened.open()  # the columns are there now: nothing to add twice
    await reopened.close()


async def test_takes_of_an_upload_each_continue_the_same_part(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    upload = FakeAttachment("song.mp3", "audio/mpeg", tone(".mp3", 6.0, channels=1))
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        interaction = await world.generate(prompt="funk bass", duration=2, format="wav", audio=upload, variants=2)
        (post,) = await world.result_of(interaction)
    assert "2 takes of **funk bass** · 2 s, from **song.mp3**" in interaction.original.content
    notes = [next(f["value"] for f in embed["fields"] if f["name"] == "Audio in") for embed in post.embeds]
    assert notes == ["continues the last 6 s of song.mp3 (0:00–0:06)"] * 2
    (_, first), (_, second) = audio_files(post)
    one, two = decode(first), decode(second)
    assert abs(one.duration - 8.0) < 0.05 and abs(two.duration - 8.0) < 0.05  # the part it heard, then 2 s more
    assert np.allclose(one.samples[:, : 5 * one.sample_rate], two.samples[:, : 5 * two.sample_rate], atol=1e-3)
    assert not np.allclose(one.samples[:, -one.sample_rate:], two.samples[:, -two.sample_rate:], atol=1e-3)
    assert world.fake.downloads == [upload.id]  # one upload, fetched once for both takes


async def test_a_stop_between_takes_keeps_the_made_ones_for_one_post_after_the_restart(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    gate, backend = gated(tiny_model_dir)
    async with running_bot(
        world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend, engine={"max_batch": 1},
        shutdown_grace=30,
    ) as bot:
        interaction = await world.generate(prompt="halves", seed=3, variants=2)
        await world.fake.wait_for(lambda: len(backend.batches) == 1)  # take 1 at the gate, take 2 queued
        closing = asyncio.create_task(bot.close())
        await world.fake.wait_for(lambda: "keeps its place" in interaction.original.content)
        gate.open()  # take 1 finishes within the grace; take 2 waits for the next start
        await closing
    assert not [m for m in world.fake.messages if m.attachments]  # not posted without its other take
    async with journal_of(tmp_path) as store:
        one, two = await store.journal.takes_of((await store.journal.unfinished())[0].ticket_id)
    assert (one.state, two.state) == (State.DELIVERING, State.QUEUED) and one.audio_path is not None

    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        (post,) = await world.result_of(interaction)
    assert jobs_of(post) == [one.job_id, two.job_id] and seeds_of(post) == ["`3`", "`4`"]
    assert len([m for m in world.fake.messages if m.attachments]) == 1
