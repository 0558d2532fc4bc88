"""/generate (with an optional audio file), and the buttons under every result (🔁 regenerate, 🎲 variations,
⏩ extend)."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import discord
from discord import app_commands
from discord.ext import commands

from bot import uploads
from bot.checks import allowed_here
from bot.errors import UserError
from bot.journal import JobRecord
from bot.options import cap_option
from bot.pipeline import Asker
from bot.store import GuildSettings
from bot.takes import MAX_TAKES, MIN_TAKES, Takes, check_count, take_seeds
from bot.tickets import title_for
from bot.ui.buttons import JobButton
from generation.audio_in import Mode
from generation.jobs import CFG_MAX, PROMPT_MAX_CHARS, SEED_MAX, TEMPERATURE_MAX, TOP_K_MAX, JobRequest, OutputFormat
from generation.models import resolve_model_id
from generation.settings import MAX_DURATION_CAP

if TYPE_CHECKING:
    from bot.app import JamBot

log = logging.getLogger(__name__)


class JamStarter(Protocol):
    """The jam cog's entry for the "Start a jam" button under a track."""

    async def start_from_track(self, interaction: discord.Interaction, record: JobRecord) -> None: ...

VARIATIONS = 3
MODES = [
    app_commands.Choice(name="continue the file (its last 10 s)", value=Mode.CONTINUE.value),
    app_commands.Choice(
        name="follow its melody (first 30 s, looped in a longer track; melody models)", value=Mode.MELODY.value
    ),
]


def model_choices(models: list[str], current: str) -> list[app_commands.Choice[str]]:
    """The served models whose name holds what is typed (the ``model`` option's autocomplete; at most 25)."""
    names = [name for name in models if current.lower() in name.lower()]
    return [app_commands.Choice(name=name[-100:], value=name[-100:]) for name in names[:25]]


def new_seed() -> int:
    return secrets.randbelow(SEED_MAX + 1)


class Generate(commands.Cog, name="Generate"):
    def __init__(self, bot: JamBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        cap_option(self.generate, "duration", self.bot.pipeline.duration_cap)  # before the tree is synced

    @app_commands.command(name="generate", description="Turn a text prompt into music")
    @app_commands.describe(
        prompt="Describe the music, e.g. 'lofi beat with soft piano, 80 bpm'",
        duration="Seconds of audio (the server sets the maximum)",
        seed="Same seed + same prompt = same track (default: random)",
        temperature="Higher is wilder; 0 is greedy",
        top_k="Sample from the k likeliest tokens (0 = off)",
        top_p="Sample from the smallest set with this much probability (0 = off; overrides top_k)",
        cfg="How closely to follow the prompt (classifier-free guidance)",
        format="Audio file format (default: the server's, usually Opus)",
        model="Which MusicGen model",
        audio="An audio file (mp3, ogg, wav, flac, m4a) to continue, or whose melody to follow",
        mode="What to do with the audio file (default: continue it)",
        variants="2–4 takes of this prompt in one batch, posted together to pick a favourite (with audio: each "
                 "continues it)",
    )
    @app_commands.choices(mode=MODES)
    async def generate(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, PROMPT_MAX_CHARS],
        duration: app_commands.Range[int, 1, int(MAX_DURATION_CAP)] = 8,  # narrowed to the cap at load
        seed: app_commands.Range[int, 0, SEED_MAX] | None = None,
        temperature: app_commands.Range[float, 0.0, TEMPERATURE_MAX] = 1.0,
        top_k: app_commands.Range[int, 0, TOP_K_MAX] = 250,
        top_p: app_commands.Range[float, 0.0, 1.0] = 0.0,
        cfg: app_commands.Range[float, 0.0, CFG_MAX] = 3.0,
        format: OutputFormat | None = None,
        model: str | None = None,
        audio: discord.Attachment | None = None,
        mode: app_commands.Choice[str] | None = None,
        variants: app_commands.Range[int, MIN_TAKES, MAX_TAKES] | None = None,
    ) -> None:
        guild = allowed_here(interaction, self.bot.store)
        if variants is not None:
            check_count(variants)
        if mode is not None and audio is None:
            raise UserError("`mode` says what to do with an audio file: attach one with the `audio` option.")
        how = Mode(mode.value) if mode is not None else Mode.CONTINUE
        fields: dict[str, Any] = {
            "prompt": prompt, "duration": duration, "model": self.model_for(model, how),
            "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p, "cfg_coef": cfg},
            "format": format or guild.default_format or self.bot.settings.default_format,
        }
        if seed is not None:
            fields["seed"] = seed
        if audio is not None:
            await self.start_with_audio(interaction, guild, fields, audio, how, variants)
            return
        requests = self._requests(interaction, guild, fields, variants)
        what, length = requests[0].prompt, requests[0].duration
        if variants is None:
            await self._start(interaction, requests, title_for("generate", what, length))
            return
        await self._start(interaction, requests, title_for("takes", what, length, variants), Takes())

    @generate.autocomplete("model")
    async def _models(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return model_choices(self.bot.models, current)

    # -- buttons ------------------------------------------------------------------------
    async def press(self, interaction: discord.Interaction, action: str, job_id: str) -> None:
        guild = allowed_here(interaction, self.bot.store)
        record = await self.bot.store.journal.get(job_id)
        if record is None or record.guild_id != interaction.guild_id:
            raise UserError("jamgen doesn't know that track (it may have been pruned). Use /generate.")
        if action == "jam":  # anyone may start a jam from a posted track: they host it
            await self._start_jam(interaction, record)
            return
        if record.user_id != interaction.user.id:
            raise UserError(f"Only <@{record.user_id}> can use these buttons. Use /generate for your own take.")
        requests, title = self._for_action(interaction, guild, record, action)
        await self._start(interaction, requests, title)

    async def _start_jam(self, interaction: discord.Interaction, record: JobRecord) -> None:
        jams: JamStarter | None = self.bot.get_cog("Jam")  # type: ignore[assignment]
        if jams is None:
            raise UserError("Jams are not available on this bot right now.")
        await jams.start_from_track(interaction, record)

    def _for_action(
        self, interaction: discord.Interaction, guild: GuildSettings, record: JobRecord, action: str
    ) -> tuple[list[JobRequest], str]:
        base = self._base_of(record.request, action)
        prompt, duration = record.request.prompt, record.request.duration
        if action == "regen":
            request = self._request(interaction, guild, {**base, "seed": new_seed()})
            return [request], title_for("regen", prompt, duration)
        if action == "vary":
            requests = [self._request(interaction, guild, {**base, "seed": new_seed()}) for _ in range(VARIATIONS)]
            return requests, title_for("vary", prompt, duration, VARIATIONS)
        if record.audio_path is None or not Path(record.audio_path).exists():
            raise UserError("That track's audio is no longer kept, so it can't be extended. Use 🔁 or /generate.")
        extension = min(duration, self.bot.pipeline.max_duration(guild))  # past the window it slides
        fields = {**base, "seed": new_seed(), "duration": extension, "continue_from": record.audio_path}
        return [self._request(interaction, guild, fields)], title_for("extend", prompt, extension)

    @staticmethod
    def _base_of(request: JobRequest, action: str) -> dict[str, Any]:
        """The fields a button's jobs keep. 🔁 and 🎲 continue the same part of an upload again (a ⏩ Extend's
        clip is not kept: they start afresh); ⏩ continues the track itself."""
        upload_part = request.continue_from if request.audio_note is not None else None
        dropped = {"seed", "max_file_bytes", "owner", "continue_from"}
        if request.continue_from is not None and (action == "extend" or upload_part is None):
            dropped.add("audio_note")  # it said which part of an upload the track continued
        base = request.model_dump(exclude=dropped)
        if upload_part is not None and action != "extend":
            base["continue_from"] = upload_part
        return base

    # -- audio in -----------------------------------------------------------------------
    async def start_with_audio(
        self, interaction: discord.Interaction, guild: GuildSettings, fields: dict[str, Any],
        attachment: discord.Attachment, mode: Mode, variants: int | None = None,
    ) -> None:
        """What costs nothing is refused before the deferral; the download, decoding and limits after it (a refusal
        then replaces the "thinking…" message with a private one)."""
        limits = uploads.limits_of(self.bot.settings)
        self._request(interaction, guild, fields)  # every other value, refused now
        uploads.check(attachment, limits)
        await interaction.response.defer(thinking=True)
        folder = uploads.uploads_dir(self.bot.engine.settings.data_dir)
        try:
            prepared = await uploads.fetch(attachment, mode, fields["model"], folder, limits)
            extra = uploads.input_fields(prepared, fields["duration"])
            requests = self._requests(interaction, guild, {**fields, **extra}, variants)
            prompt, duration = requests[0].prompt, requests[0].duration
            if variants is None:
                title, takes = title_for(mode.value, prompt, duration, source=prepared.name), None
            else:
                title, takes = title_for("takes", prompt, duration, variants, source=prepared.name), Takes()
            ticket = await self.bot.pipeline.admit(Asker.of(interaction), requests, title, interaction, takes=takes)
        except Exception as exc:
            await uploads.refuse_deferred(interaction, exc)
            return
        await self.bot.pipeline.launch(ticket, requests)

    def model_for(self, name: str | None, mode: Mode = Mode.CONTINUE) -> str:
        """The model asked for (default: the first served; for a melody, the first melody model served)."""
        if mode is Mode.MELODY:
            return uploads.melody_model(self.bot.models, None if name is None else self._model(name))
        return self._model(name)

    # -- shared -------------------------------------------------------------------------
    def _model(self, name: str | None) -> str:
        if name is None:
            return self.bot.models[0]
        wanted = {name, resolve_model_id(name)}  # "small" names facebook/musicgen-small
        matches = [model for model in self.bot.models if model in wanted]
        if not matches:
            raise UserError(f"This bot serves: {', '.join(self.bot.models)}. Pick one of those.")
        return matches[0]

    def _request(
        self, interaction: discord.Interaction, guild: GuildSettings, fields: dict[str, Any], share: int = 1
    ) -> JobRequest:
        """Validate server-side: the declared ranges are only a hint to well-behaved clients. ``share``: how many
        files share the post's upload limit. Every track keeps its codes: a jam may start from it (bot.jam)."""
        return JobRequest.create(
            max_duration=self.bot.pipeline.max_duration(guild), owner=str(interaction.user.id),
            max_file_bytes=interaction.filesize_limit // share, **{"keep_codes": True, **fields},
        )

    def _requests(
        self, interaction: discord.Interaction, guild: GuildSettings, fields: dict[str, Any], variants: int | None
    ) -> list[JobRequest]:
        """One request, or ``variants`` takes of it: seeds ``seed``, ``seed + 1``, … (or random ones), each file
        encoded to its share of the upload limit, since they are posted in one message."""
        if variants is None:
            return [self._request(interaction, guild, fields)]
        seeds = take_seeds(check_count(variants), fields.get("seed"))
        return [self._request(interaction, guild, {**fields, "seed": seed}, share=variants) for seed in seeds]

    async def _start(
        self, interaction: discord.Interaction, requests: list[JobRequest], title: str, takes: Takes | None = None
    ) -> None:
        """Admit (refusals are ephemeral and instant), defer at once, then queue."""
        ticket = await self.bot.pipeline.admit(Asker.of(interaction), requests, title, interaction, takes=takes)
        try:
            await interaction.response.defer(thinking=True)
        except discord.HTTPException:
            self.bot.pipeline.release(ticket, refund=True)
            raise
        await self.bot.pipeline.launch(ticket, requests)


async def setup(bot: JamBot) -> None:
    bot.add_dynamic_items(JobButton)
    await bot.add_cog(Generate(bot))
