"""Start-up settings: clear messages for a missing or malformed token, and the token never shown."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import discord
import pytest

from bot.errors import ConfigError
from bot.settings import BotSettings, check_deployment, load_redis_settings, load_settings

GOOD_TOKEN = "MTA0NTY3ODkwMTIzNDU2Nzg5MA.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_ambient_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DISCORD_TOKEN", "DISCORD_API_BASE_URL", "DISCORD_GATEWAY_URL", "MUSICGEN_MODEL", "JAMGEN_MODELS",
                 "JAMGEN_SHARD_COUNT", "JAMGEN_SHARD_IDS", "REDIS_URL", "JAMGEN_BOT_NAME"):
        monkeypatch.delenv(name, raising=False)


def write_env(tmp_path: Path, text: str) -> Path:
    env = tmp_path / ".env"
    env.write_text(text)
    return env


def test_missing_token_explains_how_to_make_and_invite_a_bot(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_env(tmp_path, "JAMGEN_DEVICE=cpu\n"))
    message = str(caught.value)
    assert "DISCORD_TOKEN is missing" in message
    assert "bot  applications.commands" in message
    assert "Attach Files" in message
    granted = discord.Permissions(int(re.search(r"permissions integer (\d+)", message).group(1)))  # type: ignore[union-attr]
    assert granted.attach_files and granted.embed_links and granted.send_messages and granted.read_message_history
    assert f"`{granted.value}`" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("token", ["", "not-a-token", "abc.def", "a" * 70])
def test_malformed_token_is_refused_with_the_reason(tmp_path: Path, token: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_env(tmp_path, f"DISCORD_TOKEN={token}\n"))
    assert "DISCORD_TOKEN is" in str(caught.value)
    assert ("empty" if not token else "malformed") in str(caught.value)


def test_token_is_secret_in_reprs_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bot, _ = load_settings(write_env(tmp_path, f"DISCORD_TOKEN=Bot {GOOD_TOKEN}\n"))
    assert bot.token.get_secret_value() == GOOD_TOKEN  # the "Bot " prefix people paste is dropped
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("settings: %s %r", bot, bot)
    assert GOOD_TOKEN not in caplog.text and GOOD_TOKEN not in repr(bot)


def test_urls_are_checked_and_default_to_discord(tmp_path: Path) -> None:
    bot, _ = load_settings(write_env(tmp_path, f"DISCORD_TOKEN={GOOD_TOKEN}\n"))
    assert bot.api_base_url == "https://discord.com/api/v10"
    assert bot.gateway_url.startswith("wss://gateway.discord.gg")
    with pytest.raises(ConfigError, match=r"DISCORD_GATEWAY_URL.*ws://"):
        load_settings(write_env(tmp_path, f"DISCORD_TOKEN={GOOD_TOKEN}\nDISCORD_GATEWAY_URL=http://x\n"))


def test_bad_numbers_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JAMGEN_USER_MAX_JOBS"):
        load_settings(write_env(tmp_path, f"DISCORD_TOKEN={GOOD_TOKEN}\nJAMGEN_USER_MAX_JOBS=0\n"))


def test_models_list_from_json(tmp_path: Path) -> None:
    env = write_env(tmp_path, f'DISCORD_TOKEN={GOOD_TOKEN}\nJAMGEN_MODELS=["small", "medium"]\n')
    bot, _ = load_settings(env)
    assert bot.models == ["small", "medium"]


def test_shards_from_json_and_only_shard_0_syncs_commands(tmp_path: Path) -> None:
    unsharded, _ = load_settings(write_env(tmp_path, f"DISCORD_TOKEN={GOOD_TOKEN}\n"))
    assert (unsharded.sharded, unsharded.syncs_commands) == (False, True)
    for ids, syncs in (("[0, 2]", True), ("[1, 3]", False)):
        bot, _ = load_settings(write_env(tmp_path, f"DISCORD_TOKEN={GOOD_TOKEN}\nJAMGEN_SHARD_COUNT=4\n"
                                                   f"JAMGEN_SHARD_IDS={ids}\n"))
        assert (bot.shard_count, bot.shard_ids, bot.syncs_commands) == (4, json.loads(ids), syncs)


@pytest.mark.parametrize(("lines", "problem"), [
    ("JAMGEN_SHARD_COUNT=2\n", "JAMGEN_SHARD_COUNT and JAMGEN_SHARD_IDS go together"),
    ("JAMGEN_SHARD_IDS=[0]\n", "JAMGEN_SHARD_COUNT and JAMGEN_SHARD_IDS go together"),
    ("JAMGEN_SHARD_COUNT=2\nJAMGEN_SHARD_IDS=[1, 2]\n", r"JAMGEN_SHARD_IDS \[2\] not in \[0, 2\)"),
    ("JAMGEN_SHARD_COUNT=2\nJAMGEN_SHARD_IDS=[-1]\n", r"JAMGEN_SHARD_IDS \[-1\] not in \[0, 2\)"),
    ("JAMGEN_SHARD_COUNT=2\nJAMGEN_SHARD_IDS=[]\n", "JAMGEN_SHARD_IDS must list this process's shards"),
    ("JAMGEN_SHARD_COUNT=2\nJAMGEN_SHARD_IDS=[1, 1]\n", "each once"),
    ("JAMGEN_SHARD_COUNT=0\nJAMGEN_SHARD_IDS=[0]\n", "JAMGEN_SHARD_COUNT: Input should be greater than or equal to 1"),
])
def test_bad_shards_say_what_to_fix(tmp_path: Path, lines: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(write_env(tmp_path, f"DISCORD_TOKEN={GOOD_TOKEN}\n{lines}"))


def test_some_shards_without_redis_are_refused_and_their_name_on_redis_says_which(tmp_path: Path) -> None:
    shards = f"DISCORD_TOKEN={GOOD_TOKEN}\nJAMGEN_SHARD_COUNT=4\nJAMGEN_SHARD_IDS=[3, 1]\n"
    bot, _ = load_settings(write_env(tmp_path, shards))
    with pytest.raises(ConfigError, match="Set REDIS_URL"):
        check_deployment(bot, load_redis_settings(write_env(tmp_path, shards)))
    check_deployment(bot, load_redis_settings(write_env(tmp_path, shards + "REDIS_URL=redis://127.0.0.1:1/0\n")))
    assert bot.process_name("host") == "host-shards-1-3"
    every, _ = load_settings(write_env(tmp_path, f"DISCORD_TOKEN={GOOD_TOKEN}\nJAMGEN_SHARD_COUNT=2\n"
                                                 "JAMGEN_SHARD_IDS=[1, 0]\n"))
    check_deployment(every, load_redis_settings(write_env(tmp_path, "")))  # all shards in one process: no Redis
    assert every.process_name("host") == "host"


def test_run_without_token_exits_2_with_help_and_no_traceback(tmp_path: Path) -> None:
    env = write_env(tmp_path, "JAMGEN_DEVICE=cpu\n")
    result = subprocess.run(
        [sys.executable, "-m", "jamgen.cli", "run", "--env-file", str(env)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    assert "DISCORD_TOKEN is missing" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_settings_are_frozen() -> None:
    settings = BotSettings(token=GOOD_TOKEN)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        settings.queue_cap = 5  # type: ignore[misc]
