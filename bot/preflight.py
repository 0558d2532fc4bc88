"""Start-up checks that are cheap and catch what would otherwise fail later, job by job.

:func:`preflight` runs after the settings load and before the bot connects: the data directory
must be creatable, writable and have room, and FFmpeg (through PyAV) must be able to encode the
default output format. Every problem becomes one line of a :class:`~bot.errors.ConfigError`
saying what is wrong and how to fix it.

The probes (free space, a test write, PyAV, the encoders, the ``ffmpeg`` command) are injectable
through :class:`Probes`, so tests simulate a full disk or a missing codec without breaking the
machine. ``jamgen doctor`` reuses the same probes and thresholds. Nothing here imports torch.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bot.errors import ConfigError
from generation.jobs import OutputFormat

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 200 * 1024**2  # the database, kept audio and logs; a clip is well under 1 MB
FFMPEG_FIX = "install FFmpeg (sudo apt-get install ffmpeg), then rerun scripts/setup.sh to rebuild PyAV"
DATA_DIR_SETTING = "JAMGEN_DATA_DIR"


def _disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


def _write_test_file(directory: Path) -> None:
    """Create, write and delete a small file in ``directory``; raises :class:`OSError` when it cannot."""
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".jamgen-write-test-") as handle:
        handle.write(b"\0" * 4096)
        handle.flush()
        os.fsync(handle.fileno())


def _pyav_error() -> str | None:
    """Why PyAV (FFmpeg's libraries) cannot be loaded, or ``None`` when it can."""
    try:
        importlib.import_module("av")
    except Exception as exc:  # ImportError, or an OSError from a missing libav*.so
        return f"{type(exc).__name__}: {exc}"
    return None


def _codecs() -> Mapping[OutputFormat, bool]:
    from generation.encode import available_codecs  # imports PyAV: only after _pyav_error() said it loads

    return available_codecs()


@dataclass(frozen=True)
class Probes:
    """How the checks look at the machine; replace any of them in tests."""

    disk_free: Callable[[Path], int] = _disk_free
    write_test_file: Callable[[Path], None] = _write_test_file
    pyav_error: Callable[[], str | None] = _pyav_error
    codecs: Callable[[], Mapping[OutputFormat, bool]] = _codecs
    which: Callable[[str], str | None] = shutil.which


DEFAULT_PROBES = Probes()


@dataclass(frozen=True)
class Problem:
    """What is wrong, and how to fix it."""

    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}: {self.fix}."


def megabytes(size: int) -> str:
    return f"{size / 1024**2:,.0f} MB"


def data_dir_problem(data_dir: Path, probes: Probes = DEFAULT_PROBES) -> Problem | None:
    """Whether ``data_dir`` can hold the database and the audio: created, writable, with room."""
    where = f"{data_dir}/"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return Problem(f"Cannot create the data directory {where} ({exc.strerror or exc})",
                       f"create it yourself, or set {DATA_DIR_SETTING} to a directory the bot may write to")
    free = probes.disk_free(data_dir)
    if free < MIN_FREE_BYTES:
        return _no_space(where, free)
    try:
        probes.write_test_file(data_dir)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _no_space(where, free)
        return Problem(f"Cannot write to the data directory {where} ({exc.strerror or exc})",
                       f"fix its permissions (the bot's user must be able to write there), or set {DATA_DIR_SETTING}")
    return None


def _no_space(where: str, free: int) -> Problem:
    return Problem(f"No space left in {where} ({megabytes(free)} free, need {megabytes(MIN_FREE_BYTES)})",
                   f"free some space or set {DATA_DIR_SETTING} to a disk with room")


def ffmpeg_problem(probes: Probes = DEFAULT_PROBES) -> Problem | None:
    """Whether PyAV, which encodes every file and reads clips back for Extend, loads FFmpeg's libraries."""
    error = probes.pyav_error()
    if error is None:
        return None
    return Problem(f"FFmpeg cannot be loaded through PyAV ({error})", FFMPEG_FIX)


def missing_encoders(probes: Probes = DEFAULT_PROBES) -> list[OutputFormat]:
    """The output formats whose encoder this FFmpeg build lacks (all of them when PyAV does not load)."""
    if probes.pyav_error() is not None:
        return list(OutputFormat)
    return [fmt for fmt, ok in probes.codecs().items() if not ok]


def encoder_problem(fmt: OutputFormat, probes: Probes = DEFAULT_PROBES) -> Problem | None:
    """Whether the encoder that ``fmt`` needs is in this FFmpeg build (assumes PyAV loads)."""
    if probes.codecs().get(fmt, False):
        return None
    return Problem(f"FFmpeg has no encoder for {fmt.value}, the default output format",
                   f"{FFMPEG_FIX} (Debian's ffmpeg has them all), or set JAMGEN_DEFAULT_FORMAT to a format "
                   "that is available")


def startup_problems(
    default_format: OutputFormat, data_dir: Path, probes: Probes = DEFAULT_PROBES
) -> list[Problem]:
    """Everything that would stop the bot from making and keeping files, one fix per line."""
    ffmpeg = ffmpeg_problem(probes)
    encoder = encoder_problem(default_format, probes) if ffmpeg is None else None
    return [problem for problem in (data_dir_problem(data_dir, probes), ffmpeg, encoder) if problem is not None]


def preflight(default_format: OutputFormat, data_dir: Path, probes: Probes = DEFAULT_PROBES) -> None:
    """Raise :class:`ConfigError` listing every start-up problem; warn about the optional ``ffmpeg`` command."""
    problems = startup_problems(default_format, data_dir, probes)
    if len(problems) == 1:
        raise ConfigError(str(problems[0]))
    if problems:
        raise ConfigError("\n  ".join(["The bot cannot start:", *map(str, problems)]))
    if probes.which("ffmpeg") is None:
        log.warning("the ffmpeg command is not on PATH; the bot does not need it, but audiocraft's tools do (%s)",
                    FFMPEG_FIX)
    log.info("preflight ok: %s writable with room, %s encoder present", data_dir, default_format.value)
