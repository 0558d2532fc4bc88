"""A real JamBot, on the tiny model, connected to the fake Discord. Nothing inside discord.py is mocked."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from bot.app import JamBot, create_bot
from bot.journal import JobRecord, State
from bot.settings import BotSettings
from bot.store import Store
from generation.redis.settings import RedisSettings
from generation.settings import EngineSettings
from generation.worker import BackendFactory
from tests.fakes.discord import FakeDiscord, FakeGuild, FakeInteraction, FakeMessage, FakeUser
from tests.helpers import FaultyBackend, tiny_backend

TOKEN = "MTA0NTY3ODkwMTIzNDU2Nzg5MA.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB"
MANAGE_GUILD = 1 << 5


@dataclass
class World:
    """The fake server with one guild, two channels and three members (one of them a moderator)."""

    fake: FakeDiscord
    guild: FakeGuild
    jam: Any  # FakeChannel
    other: Any
    alice: FakeUser
    bob: FakeUser
    mod: FakeUser

    async def generate(self, user: FakeUser | None = None, channel: Any = None, **options: Any) -> FakeInteraction:
        options.setdefault("prompt", "lofi beat with soft piano")
        options.setdefault("duration", 2)
        return await self.fake.send_command(
            "generate", options, user=user or self.alice, guild=self.guild, channel=channel or self.jam
        )

    async def result_of(self, interaction: FakeInteraction, count: int = 1, timeout: float = 60) -> list[FakeMessage]:
        """Wait for ``count`` posts with audio that answer ``interaction`` (follow-ups or channel fallbacks)."""

        def posts() -> list[FakeMessage]:
            return [
                m for m in self.fake.messages
                if m.attachments and (m.interaction_id == interaction.id or m.via == "channel")
            ]

        await self.fake.wait_for(lambda: len(posts()) >= count, timeout=timeout)
        return posts()


def make_world(fake: FakeDiscord) -> World:
    guild = fake.add_guild("jam server")
    jam, other = guild.add_channel("jam"), guild.add_channel("general")
    alice, bob, mod = fake.add_user("alice"), fake.add_user("bob"), fake.add_user("mod")
    guild.add_member(alice)
    guild.add_member(bob)
    moderators = guild.add_role("moderators", permissions=MANAGE_GUILD)
    guild.add_member(mod, roles=(moderators,))
    return World(fake, guild, jam, other, alice, bob, mod)


def assert_kept_to_the_api(fake: FakeDiscord) -> None:
    """What every bot test checks at its end: each request the bot sent matched a route the fake serves (a route
    it does not serve would be a 404 here, and untested against Discord's description) and had a valid body."""
    assert fake.unknown_routes == [], (
        f"the bot called routes the fake Discord does not serve: {fake.unknown_routes}; if Discord has them, "
        "serve them in tests/fakes/ (rest.py or webhooks.py)"
    )
    assert fake.validation_errors == [], (
        f"the bot sent requests Discord's OpenAPI description refuses: {fake.validation_errors}"
    )


@contextlib.asynccontextmanager
async def fake_world(**options: Any) -> AsyncIterator[World]:
    """A fake Discord (``options``: FakeDiscord's) with :func:`make_world`'s guild; on a normal exit, fails
    unless the bot kept to the API (:func:`assert_kept_to_the_api`)."""
    async with FakeDiscord(**options) as fake:
        yield make_world(fake)
        assert_kept_to_the_api(fake)


def bot_settings(fake: FakeDiscord, **overrides: Any) -> BotSettings:
    values: dict[str, Any] = {
        "token": TOKEN, "api_base_url": fake.base_url, "gateway_url": fake.gateway_url,
        "application_id": fake.application_id, "edit_interval": 0.3, "shutdown_grace": 5.0,
    }
    return BotSettings(_env_file=None, **{**values, **overrides})  # type: ignore[call-arg]


def engine_settings(model_dir: Path, data_dir: Path, **overrides: Any) -> EngineSettings:
    values: dict[str, Any] = {
        "model": str(model_dir), "device": "cpu", "data_dir": data_dir, "batch_window": 0.05,
        "progress_interval": 0.05, "max_batch": 8,
    }
    return EngineSettings(_env_file=None, **{**values, **overrides})  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def running_bot(
    fake: FakeDiscord,
    model_dir: Path,
    data_dir: Path,
    *,
    backend_factory: BackendFactory | None = None,
    engine: dict[str, Any] | None = None,
    client: dict[str, Any] | None = None,
    redis: RedisSettings | None = None,
    **settings: Any,
) -> AsyncIterator[JamBot]:
    """The bot, connected and with its model loaded (on Redis: it loads none). ``engine``: EngineSettings fields;
    ``client``: discord.py client options; other keywords: BotSettings fields."""
    bot = create_bot(
        bot_settings(fake, **settings), engine_settings(model_dir, data_dir, **(engine or {})),
        backend_factory=backend_factory, redis=redis, guild_ready_timeout=0.1, **(client or {}),
    )
    runner = asyncio.create_task(bot.start(TOKEN), name="test-bot")
    try:
        await fake.wait_until_ready(timeout=30)
        await asyncio.wait_for(bot.wait_until_ready(), 30)
        if bot._warm_up is not None:
            await asyncio.wait_for(bot._warm_up, 60)
        yield bot
    finally:
        await bot.close()
        await asyncio.wait_for(runner, 30)


@contextlib.asynccontextmanager
async def journal_of(data_dir: Path) -> AsyncIterator[Store]:
    """The journal in ``data_dir``, opened on its own (for a bot that is stopped, or running elsewhere)."""
    store = Store(data_dir / "jamgen.sqlite3")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def state_reached(store: Store, job_id: str, state: State, timeout: float = 20) -> JobRecord:
    """The job's record once the journal has it in ``state``."""
    async with asyncio.timeout(timeout):
        while True:
            record = await store.journal.get(job_id)
            if record is not None and record.state is state:
                return record
            await asyncio.sleep(0.05)


def job_of(post: FakeMessage) -> str:
    """The job id on a result card (its footer says ``job <id> · ...``)."""
    return str(post.embeds[0]["footer"]["text"].split()[1])


def posts_of(world: World, job_id: str) -> list[FakeMessage]:
    """The result cards for ``job_id`` the fake has (deleted ones included)."""
    return [m for m in world.fake.messages if m.embeds and f"job {job_id} " in m.embeds[0]["footer"]["text"] + " "]


class Gate:
    """Holds every batch at the backend's door until :meth:`open`: makes queue states deterministic."""

    def __init__(self) -> None:
        import threading

        self._event = threading.Event()

    def __call__(self, tasks: object) -> None:
        if not self._event.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")

    def open(self) -> None:
        self._event.set()


def gated(model_dir: Path) -> tuple[Gate, FaultyBackend]:
    """The tiny model behind a :class:`Gate`: ``backend.batches`` records what reached the door."""
    gate = Gate()
    return gate, FaultyBackend(tiny_backend(model_dir), fault=gate)


def user_text(interaction: FakeInteraction) -> str:
    """What the user sees first: the immediate reply, or the first follow-up after a deferral."""
    callback = interaction.callback
    if callback is not None and callback.type == 4 and callback.data:
        return str(callback.data.get("content", ""))
    return "\n".join(message.content for message in interaction.followups)


def waveform_of(post: FakeMessage) -> Image.Image:
    """The result's waveform picture, after checking it: the second file (the audio stays first), a PNG that
    decodes, 1200×240 px and under 200 KB, and the image its card shows."""
    audio, picture = post.attachments
    assert not audio.filename.endswith(".png")
    assert picture.filename == "waveform.png" and picture.shown_content_type() == "image/png"
    assert len(picture.data) < 200_000
    image = Image.open(io.BytesIO(picture.data))
    image.load()  # decodes every pixel
    assert (image.format, image.size) == ("PNG", (1200, 240))
    assert post.embeds[0]["image"]["url"] == "attachment://waveform.png"
    return image
