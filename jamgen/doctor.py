"""``jamgen doctor``: check the set-up, in plain words, each problem with its fix."""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from bot.preflight import DEFAULT_PROBES, FFMPEG_FIX, Probes, data_dir_problem, ffmpeg_problem, missing_encoders
from generation.jobs import OutputFormat

MODEL_DOWNLOAD_BYTES = 2 * 1024**3  # below this a hub download may not fit; local checkpoints need nothing


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_python() -> Check:
    version = platform.python_version()
    ok = sys.version_info[:2] in ((3, 10), (3, 11))
    return Check("python", ok, version, "use Python 3.10 or 3.11 (audiocraft 1.3 and torch 2.1 need it)")


def check_torch() -> Check:
    try:
        import torch
    except Exception as exc:
        return Check("torch", False, f"cannot import torch: {exc}", "run scripts/setup.sh to (re)install the venv")
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        memory = torch.cuda.get_device_properties(0).total_memory / 1024**3
        return Check("torch", True, f"torch {torch.__version__}, CUDA {torch.version.cuda}: {name}, {memory:.0f} GiB")
    return Check(
        "torch", True,
        f"torch {torch.__version__}, no CUDA GPU: generation runs on the CPU (slow: minutes per clip)",
    )


def check_ffmpeg(probes: Probes = DEFAULT_PROBES) -> Check:
    """PyAV (FFmpeg's libraries) loads, has every output format's encoder, and the ffmpeg command exists."""
    pyav = ffmpeg_problem(probes)
    if pyav is not None:
        return Check("ffmpeg", False, pyav.what, pyav.fix)
    missing = [fmt.value for fmt in missing_encoders(probes)]
    binary = probes.which("ffmpeg")
    if missing:
        detail = f"no encoder for {', '.join(missing)} in this FFmpeg build"
        fix = f"{FFMPEG_FIX} (until then, do not use {', '.join(missing)}: JAMGEN_DEFAULT_FORMAT, --format)"
        return Check("ffmpeg", False, detail, fix)
    if binary is None:
        return Check("ffmpeg", False, "the ffmpeg command is not on PATH (audiocraft's tools call it)", FFMPEG_FIX)
    return Check("ffmpeg", True, f"{binary}; encoders for {', '.join(fmt.value for fmt in OutputFormat)}")


def check_settings() -> Check:
    from generation.redis.settings import RedisSettings
    from generation.settings import EngineSettings

    try:
        settings = EngineSettings()
        RedisSettings()
    except ValidationError as exc:
        from generation.jobs import describe_validation_error

        return Check("settings", False, describe_validation_error(exc), "fix the value in .env (see .env.example)")
    from generation.backends.musicgen import resolve_device
    from generation.backends.precision import resolve_mode
    from generation.errors import ModelLoadError

    try:
        precision = resolve_mode(settings.precision, resolve_device(settings.device))
    except ModelLoadError as exc:
        return Check("settings", False, str(exc), "set JAMGEN_PRECISION to one this device runs (see .env.example)")
    detail = f"model {settings.model}, device {settings.device}, precision {precision}, {settings.batching} batching"
    detail += f", max batch {settings.max_batch}, max duration {settings.max_duration:g} s"
    return Check("settings", True, detail)


def check_disk(probes: Probes = DEFAULT_PROBES) -> Check:
    """The data directory, as the bot's start-up checks it: creatable, writable, at least MIN_FREE_BYTES free."""
    from generation.settings import EngineSettings

    try:
        data_dir = EngineSettings().data_dir
    except ValidationError:
        data_dir = EngineSettings.model_fields["data_dir"].default
    problem = data_dir_problem(data_dir, probes)
    if problem is not None:
        return Check("disk", False, problem.what, problem.fix)
    free = probes.disk_free(data_dir)
    detail = f"{free / 1024**3:.1f} GiB free in {data_dir}/"
    if free < MODEL_DOWNLOAD_BYTES:
        detail += " (a hub model download needs 1-7 GB more in ~/.cache/huggingface)"
    return Check("disk", True, detail)


def check_model(model: str | None) -> Check:
    from generation.backends.musicgen import MusicGenBackend
    from generation.errors import ModelLoadError
    from generation.settings import EngineSettings

    try:
        settings = EngineSettings()
        backend = MusicGenBackend(
            model or settings.model, device=settings.device, precision=settings.precision, linear=settings.linear
        )
        backend.load()
    except ModelLoadError as exc:
        return Check("model", False, str(exc), "set MUSICGEN_MODEL to a cached hub id or a local checkpoint directory")
    except ValidationError:
        return Check("model", False, "settings are invalid", "fix the settings first")
    return Check("model", True, f"{backend.model_id} loads: {backend.sample_rate} Hz, up to {backend.max_duration:g} s")


AOF_FIX = (
    "turn on Redis' append-only file: `appendonly yes` in redis.conf (or CONFIG SET appendonly yes, then "
    "CONFIG REWRITE); without it a crash loses every job queued since the last snapshot"
)


def check_redis(url: str) -> Check:
    """Scaled out (``REDIS_URL`` set): Redis answers, and keeps what it acknowledged (AOF on)."""
    from redis import Redis
    from redis.exceptions import RedisError, ResponseError

    client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        version = client.info("server").get("redis_version", "?")
        try:
            appendonly = client.config_get("appendonly").get("appendonly")
        except ResponseError:  # a managed Redis may refuse CONFIG
            return Check("redis", True, f"Redis {version}; CONFIG is refused here, so check that AOF is on yourself")
    except RedisError as exc:
        return Check("redis", False, f"cannot reach REDIS_URL: {exc}", "start Redis, or fix REDIS_URL in .env")
    finally:
        client.close()
    if appendonly != "yes":
        return Check("redis", False, f"Redis {version} runs with appendonly {appendonly}", AOF_FIX)
    return Check("redis", True, f"Redis {version}, append-only file on")


def _redis_url() -> str | None:
    from generation.redis.settings import RedisSettings

    try:
        url = RedisSettings().url
    except ValidationError:
        return None  # the settings check says what is wrong
    return None if url is None else url.get_secret_value()


def run_doctor(model: str | None, skip_model: bool = False, probes: Probes = DEFAULT_PROBES) -> int:
    checks: list[Callable[[], Check]] = [
        check_python, check_torch, lambda: check_ffmpeg(probes), check_settings, lambda: check_disk(probes),
    ]
    redis_url = _redis_url()
    if redis_url is not None:
        checks.append(lambda: check_redis(redis_url))
    if not skip_model:
        checks.append(lambda: check_model(model))
    problems = 0
    for run in checks:
        result = run()
        mark = "ok " if result.ok else "FIX"
        sys.stdout.write(f"[{mark}] {result.name}: {result.detail}\n")
        if not result.ok:
            problems += 1
            sys.stdout.write(f"      -> {result.fix}\n")
    sys.stdout.write("all good\n" if not problems else f"{problems} problem(s) found\n")
    return 1 if problems else 0
