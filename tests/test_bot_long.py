"""Long tracks in the bot: charged one request per 30 s, and the first reply states the wait past 60 s."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from generation.backends.base import GenerationTask
from generation.errors import JobFailed
from tests.bot_harness import World, running_bot
from tests.helpers import FaultyBackend, tiny_backend
from tests.test_bot_queue import refused


def failing(tasks: Sequence[GenerationTask]) -> None:
    raise JobFailed("not generated in this test")


async def test_a_long_track_is_charged_its_30_s_units_and_states_its_wait(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    backend = FaultyBackend(tiny_backend(tiny_model_dir), fault=failing)  # nothing is generated: only admission
    async with running_bot(
        world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend, engine={"max_duration": 90},
        user_rate_count=5, user_max_jobs=10,
    ):
        long_one = await world.generate(duration=75)
        assert (await long_one.wait_callback()).type == 5
        await world.fake.wait_for(lambda: long_one.original is not None and "⏱" in long_one.original.content)
        assert long_one.original is not None
        note = long_one.original.content
        assert "A 75 s track takes a while" in note and "counts as 3 against your request limit" in note
        assert "its wait is not known yet" in note  # nothing has been timed on this fresh bot
        text = await refused(await world.generate(duration=61))  # 3 more: 6 > 5
        assert "(this request counts as 3); try again in" in text
        short = await world.generate(duration=30)  # 1: 4 of 5
        assert (await short.wait_callback()).type == 5
        await world.fake.wait_for(lambda: short.original is not None and "❌" in short.original.content)
        assert short.original is not None and "⏱" not in short.original.content  # 60 s or less: no note
        assert "(this request counts as 2)" in await refused(await world.generate(duration=60))  # 2: 6 > 5
        assert (await (await world.generate(duration=2)).wait_callback()).type == 5  # 1: 5 of 5


async def test_the_expected_wait_comes_from_the_measured_pace(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    backend = FaultyBackend(tiny_backend(tiny_model_dir), fault=failing)
    async with running_bot(
        world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend, engine={"max_duration": 90},
    ) as bot:
        bot.engine.throughput.record(10.0, 1.0)  # 10 s of audio a second over 8 rows: a row renders 1.25 s a second
        interaction = await world.generate(duration=75)
        await world.fake.wait_for(lambda: interaction.original is not None and "⏱" in interaction.original.content)
    assert interaction.original is not None
    assert "expect it in about 1 min" in interaction.original.content  # 75 s at 1.25 s a second: 60 s
