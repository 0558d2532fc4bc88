"""/generate end to end: the real bot and discord.py against the fake Discord, on the tiny model."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.bot_harness import World, running_bot, waveform_of
from tests.helpers import FaultyBackend, decode, tiny_backend


async def test_generate_defers_queues_progresses_and_posts_the_track(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path) as bot:
        interaction = await world.generate(prompt="lofi beat @everyone <@&1> **loud**", duration=3, seed=1234)
        callback = await interaction.wait_callback()
        assert callback.type == 5  # deferred, public
        assert interaction.ack_latency is not None and interaction.ack_latency < 3.0
        (post,) = await world.result_of(interaction)
        await world.fake.wait_for(lambda: "posted below" in interaction.original.content)

    original = interaction.original
    assert original is not None
    edits = [edit.get("content", "") for edit in original.edits]
    assert any("queued — position 1" in text for text in edits)
    assert any("generating" in text and "%" in text for text in edits)
    assert "@everyone" not in "".join(edits)
    assert all(
        later - earlier >= bot.settings.edit_interval - 0.05
        for earlier, later in zip(original.edit_times, original.edit_times[1:], strict=False)
    )

    attachment, _ = post.attachments  # the audio, then its waveform picture
    assert attachment.filename == "lofi-beat-everyone-1-loud-1234.opus"
    waveform_of(post)
    audio = decode(attachment.data)
    assert audio.sample_rate == 48000  # Opus always decodes at 48 kHz
    assert abs(audio.duration - 3.0) < 0.05

    assert post.allowed_mentions is not None
    assert post.allowed_mentions.get("parse", []) == []
    assert [int(user) for user in post.allowed_mentions.get("users", [])] == [world.alice.id]
    assert f"<@{world.alice.id}>" in post.content
    (embed,) = post.embeds
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert fields["Seed"] == "`1234`"
    assert fields["Duration"] == "3.0 s"
    assert "temperature 1" in fields["Sampling"] and "cfg 3" in fields["Sampling"]
    assert fields["Model"] == tiny_model_dir.name
    assert {"Queued", "Generated in", "Requested by"} <= fields.keys()
    assert "@everyone" not in embed["description"]
    assert "CC-BY-NC" in embed["footer"]["text"]
    job_id = embed["footer"]["text"].split()[1]
    assert post.custom_ids() == [f"jamgen:{action}:{job_id}" for action in ("regen", "vary", "extend", "jam")]


async def test_values_outside_the_declared_ranges_are_refused_by_the_bot(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A client that ignores the declared ranges (discord.py passes such values through unchecked)."""
    cases = [
        ({"name": "duration", "type": 4, "value": 999}, "duration: must be between 1 and 30 seconds"),
        ({"name": "duration", "type": 4, "value": "abc"}, "duration: Input should be a valid number"),
        ({"name": "temperature", "type": 10, "value": 99.0}, "temperature: must be at most 5"),
        ({"name": "top_k", "type": 4, "value": -3}, "top_k: must be between 0 and 2048"),
        ({"name": "seed", "type": 4, "value": -1}, "seed: must be between 0 and"),
        ({"name": "model", "type": 3, "value": "facebook/musicgen-large"}, "This bot serves:"),
    ]
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        for option, expected in cases:
            interaction = await world.fake.send_command(
                "generate", user=world.alice, guild=world.guild, channel=world.jam,
                raw_options=[{"name": "prompt", "type": 3, "value": "lofi"}, option],
            )
            callback = await interaction.wait_callback()
            assert callback.type == 4 and callback.data is not None and callback.data["flags"] & 64
            assert expected in callback.data["content"], (option, callback.data["content"])
            assert "Traceback" not in callback.data["content"]


async def test_eta_comes_from_measured_throughput(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    release = threading.Event()

    def hold(tasks: object) -> None:  # keeps "one" running until the test has seen "two" queued
        if any(task.prompt == "one" for task in tasks):  # type: ignore[attr-defined]
            release.wait(timeout=30)

    backend = FaultyBackend(tiny_backend(tiny_model_dir), fault=hold)
    async with running_bot(
        world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend, engine={"max_batch": 1}
    ) as bot:
        await world.result_of(await world.generate(prompt="warm-up"))
        assert bot.engine.throughput.rate is not None and bot.engine.throughput.rate > 0
        first, second = await world.generate(prompt="one"), await world.generate(user=world.bob, prompt="two")
        await world.fake.wait_for(lambda: second.original is not None and "starts in ~" in second.original.content)
        release.set()
        await world.result_of(first)
        await world.result_of(second)
