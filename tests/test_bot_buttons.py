"""The buttons under a result: regenerate, variations (batched), extend; owner-only; alive after a restart."""

from __future__ import annotations

from pathlib import Path

from tests.bot_harness import World, job_of, running_bot
from tests.fakes.discord import FakeMessage
from tests.helpers import FaultyBackend, decode, tiny_backend

EPHEMERAL = 64


def fields_of(post: FakeMessage) -> dict[str, str]:
    return {field["name"]: field["value"] for field in post.embeds[0]["fields"]}


async def first_track(world: World, **options: object) -> FakeMessage:
    interaction = await world.generate(**options)
    (post,) = await world.result_of(interaction)
    return post


async def test_regenerate_keeps_the_prompt_with_a_new_seed_and_only_for_its_owner(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        post = await first_track(world, prompt="dub techno", seed=5)
        regen = f"jamgen:regen:{job_of(post)}"

        stranger = await world.fake.press_button(post, regen, user=world.bob, guild=world.guild)
        refusal = await stranger.wait_callback()
        assert refusal.type == 4 and refusal.data is not None and refusal.data["flags"] & EPHEMERAL
        assert "Only" in refusal.data["content"] and "Traceback" not in refusal.data["content"]

        pressed = await world.fake.press_button(post, regen, user=world.alice, guild=world.guild)
        assert (await pressed.wait_callback()).type == 5
        (again,) = await world.result_of(pressed)
    assert again.embeds[0]["description"] == post.embeds[0]["description"] == "dub techno"
    assert fields_of(again)["Seed"] != fields_of(post)["Seed"]
    assert job_of(again) != job_of(post)


async def test_variations_are_three_tracks_generated_in_one_batch(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    backend = FaultyBackend(tiny_backend(tiny_model_dir))
    async with running_bot(world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend):
        post = await first_track(world, prompt="ambient pads")
        custom_id = f"jamgen:vary:{job_of(post)}"
        pressed = await world.fake.press_button(post, custom_id, user=world.alice, guild=world.guild)
        posts = await world.result_of(pressed, count=3)
        await world.fake.wait_for(lambda: pressed.original is not None and pressed.original.content.count("posted") > 2)
    assert len({fields_of(p)["Seed"] for p in posts}) == 3
    assert backend.batches[-1] == ["ambient pads"] * 3
    assert "3 variations" in pressed.original.content


async def test_extend_continues_the_clip(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        post = await first_track(world, prompt="funk bass", duration=3, format="wav")
        pressed = await world.fake.press_button(
            post, f"jamgen:extend:{job_of(post)}", user=world.alice, guild=world.guild
        )
        (longer,) = await world.result_of(pressed)
    original, extended = decode(post.attachments[0].data), decode(longer.attachments[0].data)
    assert original.sample_rate == extended.sample_rate == 32000
    assert abs(original.duration - 3.0) < 0.05
    assert abs(extended.duration - 6.0) < 0.05  # the whole clip, then 3 s more


async def test_buttons_work_after_a_restart(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        post = await first_track(world, prompt="chiptune")
    async with running_bot(world.fake, tiny_model_dir, tmp_path):  # a new process would look the same
        pressed = await world.fake.press_button(
            post, f"jamgen:regen:{job_of(post)}", user=world.alice, guild=world.guild
        )
        (again,) = await world.result_of(pressed)
    assert again.embeds[0]["description"] == "chiptune"


async def test_a_forged_button_is_refused(world: World, tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(world.fake, tiny_model_dir, tmp_path):
        post = await first_track(world, prompt="chiptune")
        post.components[0]["components"][0]["custom_id"] = "jamgen:regen:0123456789ab"  # no such job
        pressed = await world.fake.press_button(post, "jamgen:regen:0123456789ab", user=world.alice, guild=world.guild)
        refusal = await pressed.wait_callback()
    assert refusal.type == 4 and refusal.data is not None and refusal.data["flags"] & EPHEMERAL
    assert "doesn't know that track" in refusal.data["content"]
