"""Where jams live: the bot's SQLite file, or Redis when scaled out. Both keep the same things the same way."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.errors import UserError
from bot.jam.model import Jam, JamState, Section, Waiting, check_add, check_may_change
from bot.jam.service import last_sections
from bot.jam.store import JamStore, RedisJams, blob_name
from bot.store import Store


@pytest.fixture(params=["sqlite", "redis"])
async def jams(request: pytest.FixtureRequest, tmp_path: Path, redis_client: Redis) -> AsyncIterator[JamStore]:
    if request.param == "redis":
        yield RedisJams(redis_client, "test:", keep_seconds=60)
        return
    store = Store(tmp_path / "jamgen.sqlite3")
    await store.open()
    assert store.jams is not None
    yield store.jams
    await store.close()


def a_jam(**fields: object) -> Jam:
    return Jam.model_validate({"guild_id": 1, "channel_id": 2, "thread_id": 3, "host_id": 4, "title": "night jam",
                               "model": "m", "format": "opus", **fields})


async def test_a_jam_and_its_blobs_are_kept_and_read_back(jams: JamStore) -> None:
    jam = a_jam(waiting=[Waiting(author_id=5, prompt="two", seconds=8, job_id="abc")])
    jam.sections.append(Section(number=1, author_id=4, prompt="one", seconds=8.0, job_id="def"))
    await jams.save(jam)
    await jams.put_blob(jam.id, blob_name(1, "audio"), b"\x00audio\xff")
    assert await jams.get(jam.id) == jam
    assert [found.id for found in await jams.open_jams()] == [jam.id]
    assert await jams.get_blob(jam.id, blob_name(1, "audio")) == b"\x00audio\xff"
    assert await jams.get_blob(jam.id, blob_name(2, "audio")) is None
    assert await jams.get("nope") is None


async def test_open_jams_come_oldest_first(jams: JamStore) -> None:
    older, newer = a_jam(created_at=100.0, channel_id=20), a_jam(created_at=200.0, channel_id=30)
    for jam in (newer, older):
        await jams.save(jam)
    assert [found.id for found in await jams.open_jams()] == [older.id, newer.id]


async def test_a_closed_jam_is_not_open_and_is_pruned_after_the_retention(jams: JamStore) -> None:
    jam = a_jam()
    await jams.save(jam)
    await jams.put_blob(jam.id, "1:codes", b"codes")
    jam.state = JamState.CLOSED
    await jams.save(jam)
    assert await jams.open_jams() == []
    assert (await jams.get(jam.id)) == jam  # kept, for /jam export in its thread
    if isinstance(jams, RedisJams):  # closed jams expire with the retention: Redis prunes them
        for key in (f"test:jam:{jam.id}", f"test:jam:{jam.id}:blobs"):
            assert 0 < await jams.client.ttl(key) <= 60
        return
    assert await jams.prune(before=time.time() - 3600) == 0
    assert await jams.prune(before=time.time() + 1) == 1
    assert await jams.get(jam.id) is None and await jams.get_blob(jam.id, "1:codes") is None


def test_caps_and_who_may_change_a_jam() -> None:
    jam = a_jam(waiting=[Waiting(author_id=5, prompt="two", seconds=8)])
    jam.sections.append(Section(number=1, author_id=4, prompt="one", seconds=20.0, job_id="def"))
    check_add(jam, 2, max_seconds=30, max_sections=3)
    with pytest.raises(UserError, match=r"28 s long .* caps jams at 30 s: a section can add at most 2 s"):
        check_add(jam, 3, max_seconds=30, max_sections=3)
    with pytest.raises(UserError, match="cap of 2 sections"):
        check_add(jam, 1, max_seconds=300, max_sections=2)
    check_may_change(jam, 5, False, 5, "undo that section")  # its author
    check_may_change(jam, 4, False, 5, "undo that section")  # the host
    check_may_change(jam, 9, True, 5, "undo that section")  # a moderator
    with pytest.raises(UserError, match="Only <@5>, the jam's host <@4> or a moderator"):
        check_may_change(jam, 9, False, 5, "undo that section")
    jam.state = JamState.CLOSED
    with pytest.raises(UserError, match="has ended"):
        check_add(jam, 1, max_seconds=300, max_sections=20)


def test_a_section_reads_only_the_last_sections_its_context_needs() -> None:
    jam = a_jam(frame_rate=50.0)
    jam.sections += [Section(number=n, author_id=4, prompt="p", seconds=s, job_id=f"j{n}")
                     for n, s in enumerate([8.0, 6.0, 4.0], start=1)]
    assert [s.number for s in last_sections(jam, 200)] == [3]  # 4 s hold 200 frames
    assert [s.number for s in last_sections(jam, 201)] == [2, 3]
    assert [s.number for s in last_sections(jam, 500)] == [2, 3]  # 10 s: the last two exactly
    assert [s.number for s in last_sections(jam, 501)] == [1, 2, 3]
    assert [s.number for s in last_sections(jam, 5000)] == [1, 2, 3]  # the jam is shorter: all of it
