"""The bot's settings: read once from the environment and ``.env``, validated at start-up.

The token is a :class:`~pydantic.SecretStr`: it prints as ``**********`` in logs and reprs.
"""

from __future__ import annotations

import logging
import re
import stat
from pathlib import Path

import discord
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import ConfigError
from generation.jobs import OutputFormat
from generation.redis.settings import RedisSettings
from generation.settings import EngineSettings

log = logging.getLogger(__name__)

PRIVATE_MODE_MASK = 0o077  # any access for the group or others

DISCORD_API = "https://discord.com/api/v10"
DISCORD_GATEWAY = "wss://gateway.discord.gg/"
# Three base64url parts joined by dots: the bot's id, a timestamp and an HMAC.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{18,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}$")

# What the bot needs in a channel: read it, post tracks (a file and an embed) in it and its threads, open a
# thread for a jam, and read recent messages (to check, after a crash, whether a track was already posted).
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, create_public_threads=True, send_messages_in_threads=True,
    embed_links=True, attach_files=True, read_message_history=True,
)

TOKEN_HELP = """\
DISCORD_TOKEN is {problem}.

To make a bot and get its token:
  1. Open https://discord.com/developers/applications and press "New Application".
  2. Under "Bot", press "Reset Token" and copy the token.
  3. Put it in .env (copy .env.example first), then `chmod 600 .env`:
       DISCORD_TOKEN=your-token-here
  4. Invite the bot: under "OAuth2" > "URL Generator", tick the scopes
       bot  applications.commands
     and the bot permissions
       View Channels, Send Messages, Create Public Threads, Send Messages in Threads,
       Embed Links, Attach Files, Read Message History
     (permissions integer {permissions}), then open the generated URL and pick your server.
  5. Optional, for instant command updates while testing: DISCORD_TEST_GUILD_ID=<your server id>.
"""


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class BotSettings(BaseSettings):
    """Everything the Discord side needs. Engine settings live in :class:`EngineSettings`."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True)

    token: SecretStr = Field(validation_alias=_alias("DISCORD_TOKEN", "token"))
    api_base_url: str = Field(DISCORD_API, validation_alias=_alias("DISCORD_API_BASE_URL", "api_base_url"))
    gateway_url: str = Field(DISCORD_GATEWAY, validation_alias=_alias("DISCORD_GATEWAY_URL", "gateway_url"))
    application_id: int | None = Field(None, validation_alias=_alias("DISCORD_APPLICATION_ID", "application_id"))
    test_guild_id: int | None = Field(None, validation_alias=_alias("DISCORD_TEST_GUILD_ID", "test_guild_id"))
    models: list[str] = Field(
        default_factory=list, validation_alias=_alias("JAMGEN_MODELS", "models"),
        description="models offered in /generate (JSON list); default: MUSICGEN_MODEL only",
    )
    user_max_jobs: int = Field(2, ge=1, le=50, validation_alias=_alias("JAMGEN_USER_MAX_JOBS", "user_max_jobs"))
    user_rate_count: int = Field(5, ge=1, le=1000, validation_alias=_alias("JAMGEN_USER_RATE_COUNT", "user_rate_count"))
    user_rate_window: float = Field(
        600.0, gt=0, le=86400, validation_alias=_alias("JAMGEN_USER_RATE_WINDOW", "user_rate_window")
    )
    queue_cap: int = Field(100, ge=1, le=10000, validation_alias=_alias("JAMGEN_QUEUE_CAP", "queue_cap"))
    default_format: OutputFormat = Field(
        OutputFormat.OPUS, validation_alias=_alias("JAMGEN_DEFAULT_FORMAT", "default_format")
    )
    edit_interval: float = Field(1.5, ge=0.0, le=60, validation_alias=_alias("JAMGEN_EDIT_INTERVAL", "edit_interval"))
    retention_days: float = Field(
        7.0, gt=0, le=3650, validation_alias=_alias("JAMGEN_RETENTION_DAYS", "retention_days"),
        description="finished jobs and their audio files are forgotten after this many days",
    )
    upload_max_mb: float = Field(
        25.0, gt=0, le=500, validation_alias=_alias("JAMGEN_UPLOAD_MAX_MB", "upload_max_mb"),
        description="the largest audio file taken as input (checked before download)",
    )
    upload_max_seconds: float = Field(
        600.0, ge=10, le=3600, validation_alias=_alias("JAMGEN_UPLOAD_MAX_SECONDS", "upload_max_seconds"),
        description="the longest audio file taken as input; decoding stops there",
    )
    shutdown_grace: float = Field(
        60.0, ge=0.0, le=900, validation_alias=_alias("JAMGEN_SHUTDOWN_GRACE", "shutdown_grace"),
        description="seconds a stopping bot lets the running batch finish and be delivered",
    )
    jam_idle_hours: float = Field(
        24.0, gt=0, le=24 * 90, validation_alias=_alias("JAMGEN_JAM_IDLE_HOURS", "jam_idle_hours"),
        description="a jam with no section added, posted or undone for this long closes itself",
    )
    shard_count: int | None = Field(
        None, ge=1, validation_alias=_alias("JAMGEN_SHARD_COUNT", "shard_count"),
        description="shards of the whole bot (all its processes); unset: one process, unsharded",
    )
    shard_ids: list[int] | None = Field(
        None, validation_alias=_alias("JAMGEN_SHARD_IDS", "shard_ids"),
        description="the shards this process runs (JSON list, each in [0, JAMGEN_SHARD_COUNT))",
    )

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value().strip()
        if raw.lower().startswith("bot "):
            raw = raw[4:].strip()
        if not raw:
            raise ValueError("empty")
        if not _TOKEN.match(raw):
            raise ValueError("malformed: a bot token is three dot-separated parts, like MTA0...Gh4.abc...xyz")
        return SecretStr(raw)

    @field_validator("api_base_url", "gateway_url")
    @classmethod
    def _url(cls, value: str, info: object) -> str:
        schemes = ("http://", "https://") if getattr(info, "field_name", "") == "api_base_url" else ("ws://", "wss://")
        if not value.startswith(schemes):
            raise ValueError(f"must start with {' or '.join(schemes)} (got {value!r})")
        return value.rstrip("/") if schemes[0] == "http://" else value

    @model_validator(mode="after")
    def _shards(self) -> BotSettings:
        if (self.shard_count is None) != (self.shard_ids is None):
            raise ValueError("JAMGEN_SHARD_COUNT and JAMGEN_SHARD_IDS go together: set both, or neither to run "
                             "unsharded")
        if self.shard_count is None or self.shard_ids is None:
            return self
        if not self.shard_ids or len(set(self.shard_ids)) != len(self.shard_ids):
            raise ValueError(f"JAMGEN_SHARD_IDS must list this process's shards, each once (got {self.shard_ids})")
        outside = [shard for shard in self.shard_ids if not 0 <= shard < self.shard_count]
        if outside:
            raise ValueError(f"JAMGEN_SHARD_IDS {outside} not in [0, {self.shard_count}) "
                             f"(JAMGEN_SHARD_COUNT={self.shard_count})")
        return self

    @property
    def sharded(self) -> bool:
        return self.shard_count is not None

    @property
    def some_shards(self) -> bool:
        """Whether this process runs only some of the bot's shards (the others run elsewhere)."""
        return self.shard_count is not None and set(self.shard_ids or ()) != set(range(self.shard_count))

    def process_name(self, host: str) -> str:
        """This process's default name on Redis: the host's, and its shards when it runs some of them."""
        return f"{host}-shards-{'-'.join(map(str, sorted(self.shard_ids or ())))}" if self.some_shards else host

    @property
    def syncs_commands(self) -> bool:
        """Whether this process syncs the command tree: unsharded, or it runs shard 0 (exactly one does)."""
        return self.shard_ids is None or 0 in self.shard_ids


def _describe(exc: ValidationError) -> str:
    token_problems = [e for e in exc.errors() if e["loc"] and e["loc"][0] in ("DISCORD_TOKEN", "token")]
    if token_problems:
        problem = token_problems[0]
        what = "missing" if problem["type"] == "missing" else problem["msg"].removeprefix("Value error, ")
        return TOKEN_HELP.format(problem=what, permissions=INVITE_PERMISSIONS.value)
    lines = [f"  {_where(e['loc'])}{e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
    return "Invalid settings (see .env.example):\n" + "\n".join(lines)


def _where(loc: tuple[int | str, ...]) -> str:
    """``"SETTING: "`` for an error about one setting; nothing for one about several (it names them)."""
    return f"{'.'.join(map(str, loc))}: " if loc else ""


def load_redis_settings(env_file: Path | None = Path(".env")) -> RedisSettings:
    """The Redis settings (``REDIS_URL`` unset: the embedded mode); :class:`ConfigError` when they are wrong."""
    try:
        return RedisSettings(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def check_deployment(bot: BotSettings, redis: RedisSettings) -> None:
    """Settings that are valid alone but not together; :class:`ConfigError` with the fix."""
    if bot.some_shards and not redis.enabled:
        raise ConfigError(
            f"JAMGEN_SHARD_IDS={bot.shard_ids} runs only some of the {bot.shard_count} shards, so other bot "
            "processes run the rest: they must share one queue, its limits and the guild settings. Set REDIS_URL "
            "(see README, \"Scaling out on Redis\"), or run every shard in this process."
        )


def env_file_exposure(env_file: Path | None) -> str | None:
    """What is wrong with ``env_file``'s permissions (it holds the token), or ``None`` when it is private."""
    if env_file is None:
        return None
    try:
        mode = stat.S_IMODE(env_file.stat().st_mode)
    except OSError:  # no .env: the settings come from the environment
        return None
    if not mode & PRIVATE_MODE_MASK:
        return None
    return (f"{env_file} holds the bot token but its mode is {mode:o}, so other users of this machine can "
            f"access it: run `chmod 600 {env_file}`")


def load_settings(env_file: Path | None = Path(".env")) -> tuple[BotSettings, EngineSettings]:
    """Read and check every setting; raise :class:`ConfigError` with what to fix, never a traceback.

    Warns (in the log) when ``env_file`` can be read by other users.
    """
    exposure = env_file_exposure(env_file)
    if exposure is not None:
        log.warning("%s", exposure)
    try:
        bot = BotSettings(_env_file=env_file)  # type: ignore[call-arg]
        engine = EngineSettings(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    return bot, engine
