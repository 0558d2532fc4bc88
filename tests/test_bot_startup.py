"""Start-up checks: a full disk, an unusable data directory, a missing encoder or FFmpeg, an open ``.env``.

The probes are injected (:class:`bot.preflight.Probes`), so a full disk or a missing codec is simulated
without touching the machine; the real probes run in the subprocess tests.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.preflight import DEFAULT_PROBES, MIN_FREE_BYTES, Probes, preflight, startup_problems
from bot.run import main as run_main
from bot.settings import env_file_exposure, load_settings
from generation.jobs import OutputFormat
from jamgen.doctor import check_disk, check_ffmpeg, run_doctor

REPO = Path(__file__).resolve().parents[1]
TOKEN = "MTA0NTY3ODkwMTIzNDU2Nzg5MA.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB"
MB = 1024**2


def free(size: int) -> Callable[[Path], int]:
    return lambda _path: size


def raise_os_error(code: int) -> Callable[[Path], None]:
    def write(_directory: Path) -> None:
        raise OSError(code, os.strerror(code))

    return write


def codecs_without(*missing: OutputFormat) -> Callable[[], dict[OutputFormat, bool]]:
    return lambda: {fmt: fmt not in missing for fmt in OutputFormat}


FULL_DISK = replace(DEFAULT_PROBES, disk_free=free(12 * MB))
NO_OPUS = replace(DEFAULT_PROBES, codecs=codecs_without(OutputFormat.OPUS))
NO_PYAV = replace(DEFAULT_PROBES, pyav_error=lambda: "ImportError: libavcodec.so.59: cannot open shared object file")


@pytest.fixture(autouse=True)
def no_ambient_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("DISCORD_", "JAMGEN_", "MUSICGEN_")):
            monkeypatch.delenv(name)


def private_env(tmp_path: Path, text: str) -> Path:
    env = tmp_path / ".env"
    env.write_text(text)
    env.chmod(0o600)
    return env


# Preflight -------------------------------------------------------------------------------------------------


def test_a_healthy_machine_passes(tmp_path: Path) -> None:
    data = tmp_path / "nested" / "data"
    preflight(OutputFormat.OPUS, data)  # the real probes: this machine has room, PyAV and libopus
    assert data.is_dir()
    assert list(data.iterdir()) == []  # the write test leaves nothing behind


def test_a_full_disk_says_how_much_is_free_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        preflight(OutputFormat.OPUS, tmp_path / "data", FULL_DISK)
    message = str(caught.value)
    assert f"No space left in {tmp_path / 'data'}/ (12 MB free, need 200 MB)" in message
    assert "free some space or set JAMGEN_DATA_DIR" in message


def test_the_threshold_is_the_constant(tmp_path: Path) -> None:
    enough = replace(DEFAULT_PROBES, disk_free=free(MIN_FREE_BYTES))
    assert startup_problems(OutputFormat.OPUS, tmp_path, enough) == []
    short = replace(DEFAULT_PROBES, disk_free=free(MIN_FREE_BYTES - 1))
    (problem,) = startup_problems(OutputFormat.OPUS, tmp_path, short)
    assert problem.what.startswith("No space left")


def test_a_write_that_fails_with_enospc_is_a_full_disk(tmp_path: Path) -> None:
    probes = replace(DEFAULT_PROBES, write_test_file=raise_os_error(errno.ENOSPC))
    with pytest.raises(ConfigError, match=r"No space left in .*free some space"):
        preflight(OutputFormat.OPUS, tmp_path, probes)


def test_an_unwritable_data_dir_names_the_permissions(tmp_path: Path) -> None:
    probes = replace(DEFAULT_PROBES, write_test_file=raise_os_error(errno.EACCES))
    with pytest.raises(ConfigError) as caught:
        preflight(OutputFormat.OPUS, tmp_path, probes)
    assert "Cannot write to the data directory" in str(caught.value)
    assert "Permission denied" in str(caught.value)
    assert "JAMGEN_DATA_DIR" in str(caught.value)


def test_a_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as caught:
        preflight(OutputFormat.OPUS, blocker / "data")  # the real probes: mkdir fails, even as root
    assert f"Cannot create the data directory {blocker / 'data'}/" in str(caught.value)
    assert "set JAMGEN_DATA_DIR" in str(caught.value)


def test_a_missing_encoder_for_the_default_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        preflight(OutputFormat.OPUS, tmp_path, NO_OPUS)
    message = str(caught.value)
    assert "no encoder for opus, the default output format" in message
    assert "apt-get install ffmpeg" in message and "JAMGEN_DEFAULT_FORMAT" in message


def test_a_missing_encoder_for_another_format_does_not_stop_the_bot(tmp_path: Path) -> None:
    preflight(OutputFormat.WAV, tmp_path, NO_OPUS)


def test_ffmpeg_libraries_missing(tmp_path: Path) -> None:
    def no_codecs() -> dict[OutputFormat, bool]:
        raise AssertionError("the encoders are not probed when PyAV does not load")

    with pytest.raises(ConfigError) as caught:
        preflight(OutputFormat.OPUS, tmp_path, replace(NO_PYAV, codecs=no_codecs))
    message = str(caught.value)
    assert "FFmpeg cannot be loaded through PyAV (ImportError: libavcodec.so.59" in message
    assert "sudo apt-get install ffmpeg" in message and "scripts/setup.sh" in message


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        preflight(OutputFormat.OPUS, tmp_path, replace(NO_OPUS, disk_free=free(0)))
    lines = str(caught.value).splitlines()
    assert lines[0] == "The bot cannot start:"
    assert [line.strip().split(" ")[0] for line in lines[1:]] == ["No", "FFmpeg"]


def test_no_ffmpeg_command_is_only_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.preflight"):
        preflight(OutputFormat.OPUS, tmp_path, replace(DEFAULT_PROBES, which=lambda _name: None))
    assert "ffmpeg command is not on PATH" in caplog.text


def test_preflight_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from bot.preflight import preflight; "
        "from generation.jobs import OutputFormat; preflight(OutputFormat.OPUS, Path(sys.argv[1])); "
        "import bot.run; print(sorted(m for m in ('torch', 'audiocraft') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# The bot's start-up: bot.run.main ------------------------------------------------------------------------


def test_run_with_a_full_disk_exits_2_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = private_env(tmp_path, f"DISCORD_TOKEN={TOKEN}\nJAMGEN_DATA_DIR={tmp_path / 'data'}\n"
                                "DISCORD_API_BASE_URL=http://127.0.0.1:9/api/v10\n")
    assert run_main(env, probes=FULL_DISK) == 2  # nothing listens on port 9: reaching Discord would fail otherwise
    err = capsys.readouterr().err
    assert err.startswith("jamgen: No space left in ")
    assert "Traceback" not in err


def test_run_with_no_encoder_for_the_chosen_default_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = private_env(tmp_path, f"DISCORD_TOKEN={TOKEN}\nJAMGEN_DATA_DIR={tmp_path / 'data'}\n"
                                "JAMGEN_DEFAULT_FORMAT=mp3\n")
    assert run_main(env, probes=replace(DEFAULT_PROBES, codecs=codecs_without(OutputFormat.MP3))) == 2
    assert "no encoder for mp3, the default output format" in capsys.readouterr().err


def test_python_m_bot_with_an_unusable_data_dir_exits_2(tmp_path: Path) -> None:
    """The real process and the real probes: the data dir's parent is a file."""
    (tmp_path / "a-file").write_text("")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
        "DISCORD_TOKEN": TOKEN, "JAMGEN_DATA_DIR": str(tmp_path / "a-file" / "data"),
        "DISCORD_API_BASE_URL": "http://127.0.0.1:9/api/v10", "DISCORD_GATEWAY_URL": "ws://127.0.0.1:9/",
    }
    result = subprocess.run([sys.executable, "-m", "bot"], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert "jamgen: Cannot create the data directory" in result.stderr
    assert "JAMGEN_DATA_DIR" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert TOKEN not in result.stderr + result.stdout


# .env permissions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_an_env_file_others_can_read_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    env = private_env(tmp_path, f"DISCORD_TOKEN={TOKEN}\n")
    env.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="bot.settings"):
        load_settings(env)
    (record,) = [r for r in caplog.records if r.name == "bot.settings"]
    assert record.levelno == logging.WARNING
    assert f"chmod 600 {env}" in record.getMessage()
    assert f"{mode:o}" in record.getMessage()
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_env_file_is_not_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int) -> None:
    env = private_env(tmp_path, f"DISCORD_TOKEN={TOKEN}\n")
    env.chmod(mode)
    with caplog.at_level(logging.DEBUG, logger="bot.settings"):
        load_settings(env)
    assert not [r for r in caplog.records if r.name == "bot.settings"]


def test_no_env_file_is_not_an_exposure(tmp_path: Path) -> None:
    assert env_file_exposure(tmp_path / "missing.env") is None
    assert env_file_exposure(None) is None


def test_the_warning_is_in_the_start_up_log(tmp_path: Path) -> None:
    """``python -m bot`` with a world-readable .env (and a data dir it cannot use, so it stops at once)."""
    (tmp_path / "a-file").write_text("")
    env_file = tmp_path / ".env"
    env_file.write_text(f"DISCORD_TOKEN={TOKEN}\nJAMGEN_DATA_DIR={tmp_path / 'a-file' / 'data'}\n")
    env_file.chmod(0o644)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "bot"], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=120)
    assert result.returncode == 2
    assert "WARNING bot.settings: .env holds the bot token but its mode is 644" in result.stderr
    assert "chmod 600 .env" in result.stderr


# jamgen doctor: the same probes ------------------------------------------------------------------------------


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Doctor reads the settings from the environment and ./.env: run it in an empty directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAMGEN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_doctor_disk_ok(in_tmp: Path) -> None:
    check = check_disk()
    assert check.ok, check
    assert f"free in {in_tmp / 'data'}/" in check.detail


def test_doctor_reports_a_full_disk_with_the_fix(in_tmp: Path) -> None:
    check = check_disk(FULL_DISK)
    assert not check.ok
    assert check.detail == f"No space left in {in_tmp / 'data'}/ (12 MB free, need 200 MB)"
    assert check.fix == "free some space or set JAMGEN_DATA_DIR to a disk with room"


def test_doctor_ffmpeg_ok() -> None:
    check = check_ffmpeg()
    assert check.ok, check
    assert "opus, mp3, wav, flac" in check.detail


def test_doctor_reports_a_missing_encoder(in_tmp: Path) -> None:
    check = check_ffmpeg(replace(DEFAULT_PROBES, codecs=codecs_without(OutputFormat.OPUS, OutputFormat.MP3)))
    assert not check.ok
    assert check.detail == "no encoder for opus, mp3 in this FFmpeg build"
    assert "sudo apt-get install ffmpeg" in check.fix


def test_doctor_reports_missing_ffmpeg(in_tmp: Path) -> None:
    check = check_ffmpeg(NO_PYAV)
    assert not check.ok
    assert "libavcodec.so.59" in check.detail
    assert "sudo apt-get install ffmpeg" in check.fix
    no_command = check_ffmpeg(replace(DEFAULT_PROBES, which=lambda _name: None))
    assert not no_command.ok and "not on PATH" in no_command.detail


def test_doctor_prints_each_problem_with_its_fix(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    probes: Probes = replace(FULL_DISK, codecs=codecs_without(OutputFormat.FLAC))
    assert run_doctor(None, skip_model=True, probes=probes) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    for name, text in (("disk", "No space left"), ("ffmpeg", "no encoder for flac")):
        (index,) = [i for i, line in enumerate(lines) if line.startswith(f"[FIX] {name}: ")]
        assert text in lines[index]
        assert lines[index + 1].strip().startswith("-> ")
    assert lines[-1] == "2 problem(s) found"
