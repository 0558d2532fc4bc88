"""The bot's small parts on their own: the throttled status message, the store, safe text."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import pytest

from bot.journal import JobRecord, State
from bot.pipeline import Pipeline
from bot.store import GuildSettings, Store
from bot.throttle import ThrottledEditor
from bot.ui.text import format_seconds, progress_bar, safe
from generation.events import JobState
from generation.jobs import JobRequest, OutputFormat
from tests.bot_harness import engine_settings


async def test_throttle_sends_first_at_once_then_coalesces_to_the_latest() -> None:
    sent: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()

    async def edit(text: str) -> None:
        sent.append((loop.time(), text))

    editor = ThrottledEditor(edit, interval=0.3, clock=loop.time)
    runner = asyncio.create_task(editor.run())
    editor.set("a")
    await asyncio.sleep(0.05)
    for text in ("b", "c", "d"):  # within one interval: only the last one goes out
        editor.set(text)
    editor.close()
    await asyncio.wait_for(runner, 2)
    assert [text for _, text in sent] == ["a", "d"]
    assert sent[1][0] - sent[0][0] >= 0.3 - 0.01


async def test_throttle_skips_repeats_and_survives_http_errors() -> None:
    calls: list[str] = []

    class Gone(discord.HTTPException):
        def __init__(self) -> None:
            self.status, self.text, self.code = 404, "Unknown Message", 10008

    async def edit(text: str) -> None:
        calls.append(text)
        if text == "boom":
            raise Gone()

    editor = ThrottledEditor(edit, interval=0.0)
    runner = asyncio.create_task(editor.run())
    editor.set("boom")
    await asyncio.sleep(0.01)
    editor.set("ok")
    await asyncio.sleep(0.01)
    editor.set("ok")  # unchanged: no edit
    editor.close()
    await asyncio.wait_for(runner, 2)
    assert calls == ["boom", "ok"]
    assert editor.edits == 1


async def test_store_keeps_guild_settings_and_jobs_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jamgen.sqlite3"
    store = Store(path)
    await store.open()
    await store.update_guild(42, allowed_channels=(1, 2), max_duration=12, default_format=OutputFormat.MP3)
    request = JobRequest.create(prompt="lofi", duration=4.0, seed=7)
    await store.journal.add(
        [JobRecord(job_id="abc", ticket_id="t", guild_id=42, channel_id=1, user_id=9, request=request, created_at=1.0)]
    )
    await store.journal.move("abc", State.DELIVERED, audio_path="/tmp/x.opus", message_id=5)
    await store.set_meta("k", "v")
    await store.close()

    again = Store(path)
    await again.open()
    assert again.guild(42) == GuildSettings(allowed_channels=(1, 2), max_duration=12, default_format=OutputFormat.MP3)
    assert again.guild(7) == GuildSettings()
    record = await again.journal.get("abc")
    assert record is not None and record.request == request
    assert (record.state, record.audio_path, record.message_id) == (State.DELIVERED, "/tmp/x.opus", 5)
    assert [state for state, _, _ in await again.journal.events("abc")] == ["queued", "delivered"]
    assert await again.journal.get("nope") is None
    assert await again.get_meta("k") == "v"
    await again.close()


async def test_store_refuses_invalid_guild_settings(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    await store.open()
    with pytest.raises(ValueError):
        await store.update_guild(1, max_duration=999)
    assert store.guild(1) == GuildSettings()
    await store.close()


def test_safe_text_cannot_ping_or_format() -> None:
    text = safe("@everyone <@&123> **bold** ```code``` @here")
    assert "@everyone" not in text and "@here" not in text
    assert "\\*\\*bold\\*\\*" in text
    assert len(safe("x" * 500, 100)) == 100


def test_small_formatters() -> None:
    assert format_seconds(7.2) == "8 s"
    assert format_seconds(125) == "2 min 05 s"
    assert format_seconds(3725) == "1 h 02 min"
    assert progress_bar(0.5, 4) == "██░░"
    assert progress_bar(2.0, 4) == "████"


async def test_a_stored_extend_job_loads_after_its_source_clip_is_gone(tmp_path: Path) -> None:
    clip = tmp_path / "clip.opus"
    clip.write_bytes(b"x")
    request = JobRequest.create(prompt="lofi", duration=4.0, continue_from=str(clip))
    store = Store(tmp_path / "s.sqlite3")
    await store.open()
    await store.journal.add(
        [JobRecord(job_id="ext", ticket_id="t", guild_id=1, channel_id=1, user_id=1, request=request, created_at=1.0)]
    )
    clip.unlink()
    record = await store.journal.get("ext")
    await store.close()
    assert record is not None and record.request.continue_from == str(clip)


async def test_the_database_is_private(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    await store.open()
    await store.close()
    assert (tmp_path / "s.sqlite3").stat().st_mode & 0o077 == 0


def test_model_option_names_only_served_models() -> None:
    from types import SimpleNamespace

    from bot.errors import UserError
    from bot.exts.generate import Generate

    cog = Generate(SimpleNamespace(models=["facebook/musicgen-small", "facebook/musicgen-medium"]))  # type: ignore[arg-type]
    assert cog._model(None) == "facebook/musicgen-small"
    assert cog._model("medium") == "facebook/musicgen-medium"
    assert cog._model("facebook/musicgen-medium") == "facebook/musicgen-medium"
    for name in ("l", "large", "facebook/musicgen-large"):
        with pytest.raises(UserError, match="This bot serves"):
            cog._model(name)


def pipeline_with_jobs(tmp_path: Path, batching: str) -> Pipeline:
    """A pipeline over a stand-in engine: two rows; 4 audio-s per s in all, measured; two jobs running
    (12 s and 20 s of audio, no progress yet), one encoding (off the rows) and three queued."""
    def job(job_id: str, state: JobState, duration: float) -> SimpleNamespace:
        return SimpleNamespace(id=job_id, state=state, request=SimpleNamespace(duration=duration), started_at=None)

    jobs = [job("r1", JobState.RUNNING, 12.0), job("r2", JobState.RUNNING, 20.0), job("e", JobState.ENCODING, 30.0),
            job("a", JobState.QUEUED, 10.0), job("b", JobState.QUEUED, 4.0), job("c", JobState.QUEUED, 6.0)]
    engine: Any = SimpleNamespace(
        settings=engine_settings(tmp_path, tmp_path, batching=batching, max_batch=2),
        throughput=SimpleNamespace(rate=4.0), jobs=lambda: jobs, positions=lambda: {"a": 1, "b": 2, "c": 3},
        waiting=lambda: [("a", 10.0), ("b", 4.0), ("c", 6.0)],
    )
    return Pipeline(None, engine, None, None, lambda _: discord.ui.View())  # type: ignore[arg-type]


def test_continuous_batching_etas_count_rows_freeing_one_by_one(tmp_path: Path) -> None:
    # A row makes 2 audio-s per s, so the running jobs have 12 / 2 = 6 s and 20 / 2 = 10 s left.
    # a takes the row freeing at 6 (done 6 + 10 / 2), b the one at 10 (done 10 + 4 / 2);
    # c takes a's, which frees first, at 11 (done 11 + 6 / 2).
    waits = pipeline_with_jobs(tmp_path, "continuous").waits()
    assert waits == {"a": (6.0, 11.0), "b": (10.0, 12.0), "c": (11.0, 14.0)}


def test_static_batching_etas_wait_for_whole_batches(tmp_path: Path) -> None:
    # At the batch's pace the running jobs have 12 / 4 = 3 s and 20 / 4 = 5 s left: a and b wait for the
    # running batch (5 s) and take (10 + 4) / 4 s together; c goes after them.
    waits = pipeline_with_jobs(tmp_path, "static").waits()
    assert waits == {"a": (5.0, 8.5), "b": (5.0, 8.5), "c": (8.5, 10.0)}
