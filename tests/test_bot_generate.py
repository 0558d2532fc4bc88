"""/generate end to end: the real bot and discord.py against the fake Discord, on the tiny model."""

from __future__ import annotations

from pathlib import Path

from tests.bot_harness import World, running_bot
from tests.helpers import decode


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

    (attachment,) = post.attachments
    assert attachment.filename.endswith(".opus")
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
    assert post.custom_ids() == [f"jamgen:{action}:{job_id}" for action in ("regen", "vary", "extend")]
