"""Many users at once: per-user limits, the global cap, the fair order, /queue and /cancel."""

from __future__ import annotations

from pathlib import Path

from tests.bot_harness import World, gated, running_bot, user_text

EPHEMERAL = 64


async def refused(interaction: object) -> str:
    callback = await interaction.wait_callback()  # type: ignore[attr-defined]
    assert callback.type == 4, f"expected an immediate refusal, got callback type {callback.type}"
    assert callback.data["flags"] & EPHEMERAL
    return str(callback.data["content"])


async def test_at_most_two_jobs_per_user_and_the_refusal_says_when(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    gate, backend = gated(tiny_model_dir)
    async with running_bot(world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend):
        first, second = await world.generate(prompt="one"), await world.generate(prompt="two")
        third = await world.generate(prompt="three")
        text = await refused(third)
        assert "2 jobs" in text and "when one of your 2 jobs finishes" in text
        other = await world.generate(user=world.bob, prompt="bob's")  # others are still served
        assert (await other.wait_callback()).type == 5
        gate.open()
        await world.result_of(first)
        await world.result_of(second)


async def test_token_bucket_refusal_names_the_time(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path, user_rate_count=2, user_max_jobs=10):
        for prompt in ("a", "b"):
            assert (await (await world.generate(prompt=prompt)).wait_callback()).type == 5
        text = await refused(await world.generate(prompt="c"))
    assert "try again in 5 min" in text


async def test_global_queue_cap(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    gate, backend = gated(tiny_model_dir)
    async with running_bot(world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend, queue_cap=1):
        running = await world.generate(prompt="a")
        await world.fake.wait_for(lambda: running.original is not None and "generating" in running.original.content)
        await world.generate(user=world.bob, prompt="b")  # the one place in the queue (running jobs are not in it)
        text = await refused(await world.generate(user=world.mod, prompt="c"))
        gate.open()
    assert "queue is full" in text


async def test_round_robin_one_users_backlog_does_not_starve_another(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    gate, backend = gated(tiny_model_dir)
    async with running_bot(
        world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend, engine={"max_batch": 1},
        user_max_jobs=10, user_rate_count=100,
    ):
        for index in range(1, 4):
            await (await world.generate(prompt=f"alice {index}")).wait_callback()
        bobs = await world.generate(user=world.bob, prompt="bob 1")
        await bobs.wait_callback()
        await world.fake.wait_for(lambda: "position 2 of 3" in (bobs.original.content if bobs.original else ""), 3)
        gate.open()
        await world.result_of(bobs)
        await world.fake.wait_for(lambda: len(backend.started) == 4)
    # alice 2 was waiting before bob arrived; then turns alternate (first come first served: a2, a3, b1)
    assert backend.started == ["alice 1", "alice 2", "bob 1", "alice 3"]


async def test_queue_shows_positions_and_cancel_ends_a_queued_job(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    gate, backend = gated(tiny_model_dir)
    async with running_bot(
        world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend, engine={"max_batch": 1}
    ):
        running = await world.generate(prompt="first")
        queued = await world.generate(prompt="second")
        await queued.wait_callback()
        await world.fake.wait_for(lambda: queued.original is not None and "position 1" in queued.original.content)

        listing = await world.fake.send_command("queue", {}, user=world.alice, guild=world.guild, channel=world.jam)
        text = await refused_or_reply(listing)
        assert "1 waiting, 1 generating" in text and "second — position 1" in text and "first — running" in text

        job_id = queued.original.content.split("`")[1]
        strangers = await world.fake.send_command(
            "cancel", {"job": job_id}, user=world.bob, guild=world.guild, channel=world.jam
        )
        assert "of yours" in await refused_or_reply(strangers)

        mine = await world.fake.send_command("cancel", {}, user=world.alice, guild=world.guild, channel=world.jam)
        assert f"Cancelled job `{job_id}`" in await refused_or_reply(mine)
        await world.fake.wait_for(lambda: "cancelled by you" in queued.original.content)
        gate.open()
        await world.result_of(running)
    assert backend.batches == [["first"]]


async def test_a_moderator_can_cancel_anyones_job(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    gate, backend = gated(tiny_model_dir)
    async with running_bot(world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend):
        running = await world.generate(prompt="loud")
        await world.fake.wait_for(lambda: running.original is not None and "`" in running.original.content)
        job_id = running.original.content.split("`")[1]
        choices = await world.fake.send_autocomplete(
            "cancel", {"job": ""}, focused="job", user=world.mod, guild=world.guild, channel=world.jam
        )
        offered = (await choices.wait_callback()).data["choices"]
        assert [choice["value"] for choice in offered] == [job_id]
        cancel = await world.fake.send_command(
            "cancel", {"job": job_id}, user=world.mod, guild=world.guild, channel=world.jam
        )
        assert "Cancelled" in await refused_or_reply(cancel)
        await world.fake.wait_for(lambda: "cancelled by moderator mod" in running.original.content)
        gate.open()


async def refused_or_reply(interaction: object) -> str:
    callback = await interaction.wait_callback()  # type: ignore[attr-defined]
    assert callback.data is not None and callback.data["flags"] & EPHEMERAL
    return user_text(interaction)  # type: ignore[arg-type]
