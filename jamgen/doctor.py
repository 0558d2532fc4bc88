"""``jamgen doctor``: check the set-up, in plain words, each problem with its fix."""

from __future__ import annotations

import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

MIN_FREE_BYTES = 2 * 1024**3


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


def check_ffmpeg() -> Check:
    from generation.encode import available_codecs

    missing = [fmt.value for fmt, ok in available_codecs().items() if not ok]
    binary = shutil.which("ffmpeg")
    if missing or binary is None:
        problems = ", ".join(missing) if missing else "the ffmpeg command"
        fix = "sudo apt-get install ffmpeg (then rerun scripts/setup.sh)"
        return Check("ffmpeg", False, f"missing: {problems}", fix)
    return Check("ffmpeg", True, f"{binary}; encoders for opus, mp3, wav and flac")


def check_settings() -> Check:
    from generation.settings import EngineSettings

    try:
        settings = EngineSettings()
    except ValidationError as exc:
        from generation.jobs import describe_validation_error

        return Check("settings", False, describe_validation_error(exc), "fix the value in .env (see .env.example)")
    detail = f"model {settings.model}, device {settings.device}, max batch {settings.max_batch}"
    return Check("settings", True, detail + f", max duration {settings.max_duration:g} s")


def check_disk() -> Check:
    from generation.settings import EngineSettings

    try:
        data_dir = EngineSettings().data_dir
    except ValidationError:
        data_dir = None
    target = data_dir if data_dir is not None and data_dir.exists() else None
    free = shutil.disk_usage(target or ".").free
    ok = free >= MIN_FREE_BYTES
    fix = "free some space: models take 1-7 GB in ~/.cache/huggingface, and results are written to the data dir"
    return Check("disk", ok, f"{free / 1024**3:.1f} GiB free", fix)


def check_model(model: str | None) -> Check:
    from generation.backends.musicgen import MusicGenBackend
    from generation.errors import ModelLoadError
    from generation.settings import EngineSettings

    try:
        settings = EngineSettings()
        backend = MusicGenBackend(model or settings.model, device=settings.device)
        backend.load()
    except ModelLoadError as exc:
        return Check("model", False, str(exc), "set MUSICGEN_MODEL to a cached hub id or a local checkpoint directory")
    except ValidationError:
        return Check("model", False, "settings are invalid", "fix the settings first")
    return Check("model", True, f"{backend.model_id} loads: {backend.sample_rate} Hz, up to {backend.max_duration:g} s")


def run_doctor(model: str | None, skip_model: bool = False) -> int:
    checks: list[Callable[[], Check]] = [check_python, check_torch, check_ffmpeg, check_settings, check_disk]
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
