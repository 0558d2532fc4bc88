"""The gateway drops or goes silent: discord.py resumes, the jobs go on, and their tracks still arrive.

The real bot on the tiny model against the fake Discord. A :class:`Gate` holds the batch so that the
disconnection surely happens while a job is running.

How discord.py 2.7.1 notices a zombie connection: its keep-alive thread closes the socket (code 4000) once
nothing at all was received for the client's ``heartbeat_timeout`` (60 s by default), and ``poll_event``
gives up a receive after the same time; either way the client reconnects and RESUMEs. HEARTBEAT_ACKs are
what keeps a quiet connection alive, so a server that stops acking looks exactly like a zombie.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.bot_harness import World, fake_world, gated, running_bot
from tests.fakes.discord import FakeInteraction, FakeMessage
from tests.helpers import FaultyBackend, decode

HEARTBEAT_INTERVAL_MS = 250
HEARTBEAT_TIMEOUT = 1.5  # discord.py's Client option; 60 s by default

pytestmark = pytest.mark.timeout(120)


async def at_the_gate(world: World, backend: FaultyBackend, prompt: str) -> FakeInteraction:
    """Start a job and wait until its batch is held at the gate."""
    interaction = await world.generate(prompt=prompt)
    await interaction.wait_callback()
    await world.fake.wait_for(lambda: [prompt] in backend.batches, timeout=15)
    return interaction


async def delivered(world: World, interaction: FakeInteraction, prompt: str) -> FakeMessage:
    (post,) = await world.result_of(interaction, timeout=30)
    assert post.embeds[0]["description"] == prompt
    attachment = post.attachments[0]  # the audio (its waveform picture follows)
    assert abs(decode(attachment.data).duration - 2.0) < 0.05
    return post


async def test_a_dropped_connection_resumes_and_the_running_job_is_delivered(
    world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    gate, backend = gated(tiny_model_dir)
    stats = world.fake.gateway.stats
    async with running_bot(world.fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend) as bot:
        running = await at_the_gate(world, backend, "through the storm")
        assert (stats.connections, stats.identifies, stats.resumes) == (1, 1, 0)
        resumed = asyncio.ensure_future(bot.wait_for("resumed", timeout=10))

        await world.fake.disconnect()
        away = not world.fake.gateway.connected
        missed = await world.generate(user=world.mod, prompt="sent while away")  # kept for the RESUME
        await resumed  # discord.py got RESUMED on a new socket
        await world.fake.wait_for(lambda: world.fake.gateway.connected)
        assert away, "the client was connected again before the command went out"
        assert (stats.connections, stats.identifies, stats.resumes) == (2, 1, 1)  # resumed, not re-identified
        assert not bot.is_closed() and bot.is_ready()

        later = await world.generate(user=world.bob, prompt="after the storm")
        assert (await later.wait_callback()).type == 5  # deferred: answered over the new connection
        assert (await missed.wait_callback()).type == 5  # replayed by the RESUME, and answered in time
        gate.open()
        await delivered(world, running, "through the storm")
        await delivered(world, later, "after the storm")
        await delivered(world, missed, "sent while away")
    assert stats.identifies == 1


@pytest.fixture
async def quick_heartbeat_world() -> AsyncIterator[World]:
    """A fake Discord that asks for a heartbeat every 250 ms (Discord asks every ~41 s)."""
    async with fake_world(heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS) as world:
        yield world


async def test_a_zombie_connection_is_noticed_and_resumed_and_the_job_is_delivered(
    quick_heartbeat_world: World, tiny_model_dir: Path, tmp_path: Path
) -> None:
    world, fake = quick_heartbeat_world, quick_heartbeat_world.fake
    stats = fake.gateway.stats
    gate, backend = gated(tiny_model_dir)
    async with running_bot(
        fake, tiny_model_dir, tmp_path, backend_factory=lambda _: backend,
        client={"heartbeat_timeout": HEARTBEAT_TIMEOUT},
    ) as bot:
        running = await at_the_gate(world, backend, "zombie proof")

        # With ACKs, a quiet connection is kept: no reconnect for twice the timeout.
        beats = stats.heartbeats
        await asyncio.sleep(2 * HEARTBEAT_TIMEOUT)
        assert stats.heartbeats - beats >= 4, "the client does not heartbeat at the interval the fake asked for"
        assert (stats.connections, stats.resumes) == (1, 0)

        fake.heartbeat_ack = False  # the server goes silent: heartbeats are sent, nothing comes back
        silent_since = time.monotonic()
        await fake.wait_for(lambda: stats.resumes >= 1, timeout=HEARTBEAT_TIMEOUT + 5)
        noticed_after = time.monotonic() - silent_since
        fake.heartbeat_ack = True
        assert noticed_after >= HEARTBEAT_TIMEOUT - 0.3, f"reconnected after {noticed_after:.2f} s: not the timeout"
        assert stats.identifies == 1 and stats.connections >= 2  # a new socket, the same session

        # Healthy again: the new connection's heartbeats are acked and it stays up.
        await fake.wait_for(lambda: bot.latency < 1.0, timeout=5)
        connections = stats.connections
        await asyncio.sleep(HEARTBEAT_TIMEOUT + 0.5)
        assert stats.connections == connections and fake.gateway.connected

        later = await world.generate(user=world.bob, prompt="after the zombie")
        assert (await later.wait_callback()).type == 5
        gate.open()
        await delivered(world, running, "zombie proof")
        await delivered(world, later, "after the zombie")
    assert stats.identifies == 1
