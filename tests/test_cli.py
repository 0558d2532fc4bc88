"""The real ``jamgen`` command, run as a subprocess against a tiny random MusicGen checkpoint.

Every model run costs an interpreter start (~5 s of imports) plus CPU decoding, so the
generated batches are module fixtures shared by the tests that read them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from generation.redis import RedisJobs
from generation.redis.registry import WorkerInfo, publish
from tests.helpers import decode
from tests.redis_helpers import NO_LIMITS, request
from tests.redis_server import RedisServer

JAMGEN = Path(sys.executable).with_name("jamgen")
PROMPTS = ("lofi slow bpm electro chill", "crazy EDM, heavy bang")
SEED = "42"
DURATION = 2.0
RUN_TIMEOUT_S = 280

pytestmark = pytest.mark.timeout(900)


def jamgen(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script offline, on the CPU, away from any stray .env or settings (``env`` added)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAMGEN_", "MUSICGEN_", "REDIS_"))}
    env = base | {"HF_HUB_OFFLINE": "1", "JAMGEN_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"} | (env or {})
    return subprocess.run(
        [str(JAMGEN), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )


def generate(
    model: Path, out: Path, *extra: str, prompts: tuple[str, ...] = PROMPTS
) -> subprocess.CompletedProcess[str]:
    return jamgen(
        "generate", *prompts, "--duration", str(DURATION), "--seed", SEED, "--model", model,
        "--device", "cpu", "-o", out, *extra, cwd=out.parent,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


@dataclass(frozen=True)
class Batch:
    result: subprocess.CompletedProcess[str]
    files: list[Path]


def run_batch(model: Path, out: Path, *extra: str, prompts: tuple[str, ...] = PROMPTS) -> Batch:
    result = ok(generate(model, out, *extra, prompts=prompts))
    return Batch(result, sorted(out.iterdir()))


@pytest.fixture(scope="module")
def opus_batch(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Batch:
    return run_batch(tiny_model_dir, tmp_path_factory.mktemp("opus") / "out", "--no-progress")


@pytest.fixture(scope="module")
def wav_batch(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Batch:
    """With the progress bar on."""
    return run_batch(tiny_model_dir, tmp_path_factory.mktemp("wav") / "out", "--format", "wav")


def test_generate_writes_one_opus_file_per_prompt(opus_batch: Batch) -> None:
    names = [path.name for path in opus_batch.files]
    assert names == ["01-lofi-slow-bpm-electro-chill.opus", "02-crazy-edm-heavy-bang.opus"]
    for path in opus_batch.files:
        audio = decode(path.read_bytes())
        assert audio.sample_rate == 48000
        assert audio.duration == pytest.approx(DURATION, abs=0.03)
        assert str(path) in opus_batch.result.stdout
    assert f"seed {SEED}" in opus_batch.result.stdout
    assert "generating" not in opus_batch.result.stderr  # --no-progress


def test_progress_bar_goes_to_stderr(wav_batch: Batch) -> None:
    assert "generating" in wav_batch.result.stderr
    assert "100%" in wav_batch.result.stderr
    assert "generating" not in wav_batch.result.stdout


def test_wav_format(wav_batch: Batch) -> None:
    assert [path.suffix for path in wav_batch.files] == [".wav", ".wav"]
    for path in wav_batch.files:
        audio = decode(path.read_bytes())
        assert audio.sample_rate == 32000
        assert audio.duration == pytest.approx(DURATION, abs=0.03)
    first, second = (path.read_bytes() for path in wav_batch.files)
    assert first != second  # each prompt gets its own music, even with the same seed


def test_mp3_format(tiny_model_dir: Path, tmp_path: Path) -> None:
    batch = run_batch(tiny_model_dir, tmp_path / "out", "--format", "mp3", "--no-progress", prompts=PROMPTS[:1])
    assert [path.name for path in batch.files] == ["01-lofi-slow-bpm-electro-chill.mp3"]
    audio = decode(batch.files[0].read_bytes())
    assert audio.sample_rate == 32000
    assert audio.duration == pytest.approx(DURATION, abs=0.03)


def test_same_seed_same_bytes_and_batching_never_changes_the_music(
    wav_batch: Batch, tiny_model_dir: Path, tmp_path: Path
) -> None:
    again = run_batch(tiny_model_dir, tmp_path / "again", "--format", "wav", "--no-progress")
    assert [path.name for path in again.files] == [path.name for path in wav_batch.files]
    for before, after in zip(wav_batch.files, again.files, strict=True):
        assert before.read_bytes() == after.read_bytes(), f"{after.name} differs between two identical runs"

    alone = run_batch(tiny_model_dir, tmp_path / "alone", "--format", "wav", "--no-progress", prompts=PROMPTS[:1])
    assert [path.name for path in alone.files] == [wav_batch.files[0].name]
    assert alone.files[0].read_bytes() == wav_batch.files[0].read_bytes(), "batching changed the first job's music"


def test_a_track_past_the_window_when_the_cap_allows_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    """JAMGEN_MAX_DURATION raises the cap past the model's 30 s window: the track slides, and is whole."""
    out = tmp_path / "out"
    env = {"JAMGEN_MAX_DURATION": "300", "OMP_NUM_THREADS": "1"}
    refused = jamgen("generate", "lofi", "--duration", "301", "--model", tiny_model_dir, "-o", out, cwd=tmp_path,
                     env=env)
    assert refused.returncode == 2 and "between 1 and 300 seconds" in refused.stderr
    result = ok(jamgen("generate", "lofi", "--duration", "35", "--model", tiny_model_dir, "--device", "cpu",
                       "--format", "wav", "--no-progress", "-o", out, cwd=tmp_path, env=env))
    (path,) = out.iterdir()
    assert decode(path.read_bytes()).duration == pytest.approx(35.0, abs=0.03), result.stdout


def test_too_long_duration_is_refused_before_loading(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = jamgen("generate", "lofi", "--duration", "45", "--model", tmp_path, "-o", out, cwd=tmp_path)
    assert result.returncode == 2
    assert "duration" in result.stderr
    assert "30" in result.stderr
    assert "usage:" not in result.stderr  # refused by the job validation, not by argparse (also exit 2)
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_a_worker_without_redis_says_what_to_set(tmp_path: Path) -> None:
    result = jamgen("worker", cwd=tmp_path)
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr


TOKEN = "MTA0NTY3ODkwMTIzNDU2Nzg5MA.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB"


@pytest.mark.parametrize(("command", "settings"), [
    ("worker", {"REDIS_URL": "redis://127.0.0.1:1/0"}),
    ("run", {"DISCORD_TOKEN": TOKEN, "DISCORD_API_BASE_URL": "http://127.0.0.1:1/api/v10"}),
])
def test_a_metrics_port_that_is_taken_is_said_plainly(tmp_path: Path, command: str, settings: dict[str, str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = jamgen(command, cwd=tmp_path, env={**settings, "JAMGEN_METRICS_PORT": port})
    assert result.returncode == 2, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr and "JAMGEN_METRICS_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_checkpoint_fails_with_a_plain_message(tmp_path: Path) -> None:
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    result = jamgen("generate", "lofi", "--duration", "2", "--model", empty, "--device", "cpu",
                    "-o", out, "--no-progress", cwd=tmp_path)
    assert result.returncode == 1
    assert "failed" in result.stderr
    assert "state_dict.bin" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(out.iterdir())


def test_doctor_all_good(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = ok(jamgen("doctor", "--model", tiny_model_dir, cwd=tmp_path))
    lines = result.stdout.strip().splitlines()
    for name in ("python", "torch", "ffmpeg", "settings", "disk", "model"):
        assert any(line.startswith(f"[ok ] {name}: ") for line in lines), f"no ok line for {name}:\n{result.stdout}"
    assert "FIX" not in result.stdout
    assert lines[-1] == "all good"


async def test_doctor_checks_that_redis_keeps_what_it_acknowledged(
    redis_server: RedisServer, redis_client: Redis, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_server.url}
    good = await asyncio.to_thread(jamgen, "doctor", "--skip-model", cwd=tmp_path, env=env)
    assert any(line.startswith("[ok ] redis: ") and "append-only file on" in line
               for line in good.stdout.splitlines()), good.stdout
    await redis_client.config_set("appendonly", "no")
    try:
        bad = await asyncio.to_thread(jamgen, "doctor", "--skip-model", cwd=tmp_path, env=env)
    finally:
        await redis_client.config_set("appendonly", "yes")
    assert bad.returncode == 1
    assert "[FIX] redis: " in bad.stdout and "appendonly yes" in bad.stdout, bad.stdout
    unreachable = await asyncio.to_thread(
        jamgen, "doctor", "--skip-model", cwd=tmp_path, env={"REDIS_URL": "redis://127.0.0.1:1/0"}
    )
    assert "[FIX] redis: cannot reach REDIS_URL" in unreachable.stdout, unreachable.stdout


def test_doctor_names_the_fix_for_a_bad_model(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = jamgen("doctor", "--model", empty, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    model_lines = [i for i, line in enumerate(lines) if line.startswith("[FIX] model: ")]
    assert len(model_lines) == 1, result.stdout
    assert "state_dict.bin" in lines[model_lines[0]]
    assert lines[model_lines[0] + 1].strip().startswith("-> ")
    assert lines[-1] != "all good"
    assert "Traceback" not in result.stderr


def test_make_test_model(tmp_path: Path) -> None:
    target = tmp_path / "m"
    result = ok(jamgen("make-test-model", target, cwd=tmp_path))
    assert (target / "state_dict.bin").stat().st_size > 0
    assert (target / "compression_state_dict.bin").stat().st_size > 0
    assert str(target) in result.stdout


def test_make_a_stereo_test_model_and_generate_two_channels(tmp_path: Path) -> None:
    target = tmp_path / "stereo"
    assert "stereo" in ok(jamgen("make-test-model", target, "--variant", "stereo", cwd=tmp_path)).stdout
    ok(jamgen("generate", "calm piano", "--model", target, "--duration", "1", "--format", "wav", "-o", tmp_path / "out",
              cwd=tmp_path))
    (wav,) = (tmp_path / "out").glob("*.wav")
    assert decode(wav.read_bytes()).channels == 2


def test_doctor_refuses_a_precision_the_device_cannot_run(tmp_path: Path) -> None:
    result = jamgen("doctor", "--skip-model", cwd=tmp_path, env={"JAMGEN_PRECISION": "fp16", "JAMGEN_DEVICE": "cpu"})
    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("[FIX] settings: ")]
    assert "fp16 does not run on cpu" in line and "fp32, bf16, int8" in line, line


def test_stats_without_redis_reads_the_journal_only(tmp_path: Path) -> None:
    missing = jamgen("stats", "--data-dir", tmp_path / "data", cwd=tmp_path)
    assert missing.returncode == 2 and "no journal" in missing.stderr, missing.stderr

    from bot.store import Store

    async def create() -> None:
        store = Store(tmp_path / "data" / "jamgen.sqlite3")
        await store.open()
        await store.close()

    (tmp_path / "data").mkdir()
    asyncio.run(create())
    result = ok(jamgen("stats", "--data-dir", tmp_path / "data", cwd=tmp_path))
    assert result.stdout.startswith("jobs in ") and "workers" not in result.stdout, result.stdout


async def test_stats_with_redis_shows_the_workers_and_the_queue_by_guild(
    redis_server: RedisServer, redis_client: Redis, tmp_path: Path
) -> None:
    jobs = RedisJobs(redis_client)
    await jobs.setup()
    info = WorkerInfo(
        name="gpu-1-77-abcdef", model="test-model", rows=8, rows_in_use=3, batching="continuous", throughput=12.5,
        steps_per_second=50.0, jobs_done=4, jobs_failed=0, started=1.0, host="gpu-1", pid=77,
    )
    await publish(redis_client, jobs.keys, info, ttl=30)
    for akey in ("1234:1", "1234:2", "None:3"):
        await jobs.admit([request(akey, "test-model")], limits=NO_LIMITS, key=akey)
    env = {"REDIS_URL": redis_server.url}
    result = ok(await asyncio.to_thread(jamgen, "stats", "--data-dir", tmp_path / "none", cwd=tmp_path, env=env))
    lines = result.stdout.splitlines()
    assert lines[0] == "workers: 1 live", result.stdout
    assert lines[2].split() == ["gpu-1-77-abcdef", "test-model", "3/8", "12.50", "audio", "s/s"], result.stdout
    assert "waiting jobs: 3" in lines
    by_guild = lines[lines.index("  by guild:") + 1 :]
    assert [line.split() for line in by_guild] == [["1234", "2"], ["DMs", "1"]], result.stdout

    unreachable = await asyncio.to_thread(jamgen, "stats", cwd=tmp_path, env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert unreachable.returncode == 2 and "cannot read REDIS_URL" in unreachable.stderr, unreachable.stderr
    assert "Traceback" not in unreachable.stderr
