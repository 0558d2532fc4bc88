"""/jam start|add|undo|export|end: one shared track per channel, built in turns (:mod:`bot.jam`)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import uploads
from bot.checks import allowed_here, is_moderator
from bot.errors import UserError
from bot.exts.generate import MODES, model_choices
from bot.jam import render
from bot.jam.model import Jam, Waiting, check_may_change
from bot.jam.service import JamService, Ready, kept_track
from bot.jam.store import JamStore, RedisJams
from bot.journal import JobRecord
from bot.options import cap_option
from bot.reply import Reply
from bot.store import GuildSettings
from bot.ui.text import safe
from generation.audio_in import Mode
from generation.jobs import PROMPT_MAX_CHARS
from generation.redis.remote import RemoteEngine
from generation.settings import MAX_DURATION_CAP

if TYPE_CHECKING:
    from bot.app import JamBot

log = logging.getLogger(__name__)

AUTO_ARCHIVE_MINUTES: Literal[10080] = 10080  # a week: Discord's longest
LOAD_RETRY = 5.0  # seconds between tries to read the open jams from an unreachable Redis
NO_THREAD = " I could not open a thread here (I need Create Public Threads), so the jam posts in this channel."


class JamCog(commands.Cog, name="Jam"):
    jam = app_commands.Group(name="jam", description="One shared track, built in turns", guild_only=True)

    def __init__(self, bot: JamBot) -> None:
        self.bot = bot
        self.service = JamService(bot, _store_of(bot))

    async def cog_load(self) -> None:
        for command in (self.start, self.add):
            cap_option(command, "seconds", self.bot.pipeline.duration_cap)
        self.bot.jams = self.service
        self.bot.pipeline.on_section_end = self.service.section_ended
        self.bot.after_recovery.append(self.service.resume)
        self.bot.keep_running(self._close_idle_forever(), "jamgen-jam-idle")
        if not await self.service.load():  # Redis is unreachable: the bot starts, and the jams follow
            self.bot.keep_running(self._load_later(), "jamgen-jam-load")

    async def _load_later(self) -> None:
        loaded = False
        while not loaded:
            await asyncio.sleep(LOAD_RETRY)
            loaded = await self.service.load()
        await self.service.resume()

    async def _close_idle_forever(self) -> None:
        hours = self.bot.settings.jam_idle_hours
        while True:
            await asyncio.sleep(min(600.0, hours * 3600 / 4))
            try:
                await self.service.close_idle(hours)
            except Exception:
                log.exception("closing idle jams failed; trying again later")

    @commands.Cog.listener()
    async def on_raw_thread_delete(self, payload: discord.RawThreadDeleteEvent) -> None:
        """A jam whose thread is deleted closes at once, so its channel can jam again."""
        await self.service.thread_deleted(payload.thread_id)

    # -- commands --------------------------------------------------------------------------------------
    @jam.command(name="start", description="Open a jam here: a thread where members add sections in turns")
    @app_commands.describe(prompt="The first section's music", title="The jam's name (default: the prompt)",
                           seconds="The first section's length", model="Which MusicGen model (kept for the whole jam)",
                           audio="An audio file (mp3, ogg, wav, flac, m4a) the first section continues, or whose "
                                 "melody it follows", mode="What to do with the audio file (default: continue it)")
    @app_commands.choices(mode=MODES)
    async def start(
        self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, PROMPT_MAX_CHARS],
        title: app_commands.Range[str, 1, 90] | None = None,
        seconds: app_commands.Range[int, 1, int(MAX_DURATION_CAP)] = 8, model: str | None = None,
        audio: discord.Attachment | None = None, mode: app_commands.Choice[str] | None = None,
    ) -> None:
        guild = self._checked(interaction)
        await self._jam_free(interaction)
        if mode is not None and audio is None:
            raise UserError("`mode` says what to do with an audio file: attach one with the `audio` option.")
        how = Mode(mode.value) if mode is not None else Mode.CONTINUE
        jam = self._new_jam(interaction, guild, title or prompt, self._model(model, how))
        item = self._waiting(interaction, prompt, seconds, guild)
        reply = Reply.of(interaction)
        if audio is None:
            await self.service.begin(jam, item, reply, self._opener(interaction, jam, reply, defer=True))
            return
        limits = uploads.limits_of(self.bot.settings)
        uploads.check(audio, limits)
        await interaction.response.defer(thinking=True)
        try:
            folder = uploads.uploads_dir(self.bot.engine.settings.data_dir)
            prepared = await uploads.fetch(audio, how, jam.model, folder, limits)
            item.inputs = uploads.input_fields(prepared, seconds)
            await self.service.begin(jam, item, reply, self._opener(interaction, jam, reply, defer=False))
        except Exception as exc:
            await uploads.refuse_deferred(interaction, exc)

    def _opener(self, interaction: discord.Interaction, jam: Jam, reply: Reply, defer: bool) -> Ready:
        """What /jam start does once its first section is admitted: open the thread (deferring first, unless the
        upload's download did), post the section there (``reply`` is its ticket's), and say where in the section's
        status message."""

        async def ready(_: bool) -> str:
            if defer:
                await interaction.response.defer(thinking=True)
            jam.thread_id, note = await self._open_thread(interaction, jam.title)
            reply.channel_id, reply.followups = jam.thread_id, False
            where = f"<#{jam.thread_id}>" if jam.thread_id != jam.channel_id else "this channel"
            return f"🎶 Jam **{safe(jam.title, 80)}** opened in {where}.{note} Add sections there with `/jam add`."

        return ready

    @jam.command(name="add", description="Queue the jam's next section: it continues the track so far")
    @app_commands.describe(prompt="This section's music", seconds="Seconds it adds")
    async def add(
        self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, PROMPT_MAX_CHARS],
        seconds: app_commands.Range[int, 1, int(MAX_DURATION_CAP)] = 8,
    ) -> None:
        guild = self._checked(interaction)
        jam = self.service.open_in(interaction.channel_id or 0)
        if jam is None:
            raise UserError("There is no open jam here. Start one with `/jam start`.")
        item = self._waiting(interaction, prompt, seconds, guild)
        reply = dataclasses.replace(Reply.of(interaction), channel_id=jam.thread_id, followups=False)

        async def ready(waits: bool) -> None:
            if not waits:
                await interaction.response.defer(thinking=True)
                return None
            number = len(jam.sections) + len(jam.waiting)  # this one is in the jam already
            await interaction.response.send_message(
                f"⏳ Section {number} ({safe(prompt, 80)}) waits for section {number - 1}; it starts when that one is "
                f"posted, in <#{jam.thread_id}>.", allowed_mentions=discord.AllowedMentions.none())
            item.status_message_id = (await interaction.original_response()).id
            return None

        await self.service.add(jam, item, (guild.jam_max_seconds, guild.jam_max_sections), reply, ready)

    @jam.command(name="undo", description="Drop the jam's last section (its author, the host or a moderator)")
    async def undo(self, interaction: discord.Interaction) -> None:
        self._checked(interaction)
        jam = self.service.here(interaction.channel_id or 0)
        await interaction.response.defer(ephemeral=True, thinking=True)
        text = await self.service.undo(jam, interaction.user.id, is_moderator(interaction))
        await interaction.followup.send(text, ephemeral=True)

    @jam.command(name="export", description="Post the jam's whole track, with its credits")
    async def export(self, interaction: discord.Interaction) -> None:
        self._checked(interaction)
        jam = self.service.here(interaction.channel_id or 0)
        if not jam.sections:
            raise UserError("The jam has no section yet: its first one is on its way.")
        await interaction.response.defer(thinking=True)
        audio = await self.service.thread.track(jam, interaction.filesize_limit)
        await interaction.followup.send(
            f"🎶 **{safe(jam.title, 100)}**, {jam.seconds:.1f} s, {render.credits(jam)}",
            embed=render.card(jam), file=self.service.thread.track_file(jam, audio),
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @jam.command(name="end", description="Close the jam (the host or a moderator)")
    async def end(self, interaction: discord.Interaction) -> None:
        self._checked(interaction)
        jam = self.service.open_in(interaction.channel_id or 0)
        if jam is None:
            raise UserError("There is no open jam here.")
        check_may_change(jam, interaction.user.id, is_moderator(interaction), None, "end the jam")
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.service.end(jam, f"ended by {interaction.user.display_name}")
        await interaction.followup.send("The jam has ended; its final track is posted in its thread.", ephemeral=True)

    @start.autocomplete("model")
    async def _models(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return model_choices(self.bot.models, current)

    # -- the "Start a jam" button under a track ------------------------------------------------------------
    async def start_from_track(self, interaction: discord.Interaction, record: JobRecord) -> None:
        """A jam whose first section is a posted track (its file and codes, as kept); the presser hosts it."""
        guild = self._checked(interaction)
        await self._jam_free(interaction)
        if record.audio_path is None:
            raise UserError("That track's audio is no longer kept, so a jam can't start from it. Use `/jam start`.")
        if record.request.model not in self.bot.models:
            raise UserError("That track's model is no longer served here, so a jam can't continue it.")
        data, codes = await kept_track(Path(record.audio_path))
        jam = self._new_jam(interaction, guild, record.request.prompt, record.request.model)
        jam.format = record.request.format.value
        await interaction.response.defer(thinking=True)
        jam.thread_id, note = await self._open_thread(interaction, jam.title)
        async with self.service.locked(jam) as jam:
            await self.service.add_section(jam, record, data, codes, context_frames=0)
            await self.service.keep(jam)
            await self.service.thread.post_track(jam)
        await interaction.followup.send(
            f"🎶 <@{interaction.user.id}> started a jam from <@{record.user_id}>'s track in <#{jam.thread_id}>.{note} "
            "Add sections there with `/jam add`.", allowed_mentions=discord.AllowedMentions.none())

    # -- helpers ------------------------------------------------------------------------------------------
    def _checked(self, interaction: discord.Interaction) -> GuildSettings:
        return allowed_here(interaction, self.bot.store)

    async def _jam_free(self, interaction: discord.Interaction) -> None:
        if isinstance(interaction.channel, discord.Thread):
            raise UserError("Start a jam in a text channel: it opens a thread of its own.")
        jam = await self.service.live_in(interaction.channel_id or 0)
        if jam is not None:
            raise UserError(f"A jam is already on here, in <#{jam.thread_id}>: join it with `/jam add` there.")

    def _model(self, name: str | None, mode: Mode) -> str:
        generate = self.bot.get_cog("Generate")
        if generate is None:
            raise UserError("jamgen is starting up; try again in a moment.")
        return str(generate.model_for(name, mode))  # type: ignore[attr-defined]

    def _new_jam(self, interaction: discord.Interaction, guild: GuildSettings, title: str, model: str) -> Jam:
        assert interaction.guild_id is not None
        channel_id = interaction.channel_id or 0
        return Jam(
            guild_id=interaction.guild_id, channel_id=channel_id, thread_id=channel_id,
            host_id=interaction.user.id, title=title, model=model,
            format=(guild.default_format or self.bot.settings.default_format).value,
            max_file_bytes=interaction.filesize_limit,
        )

    def _waiting(self, interaction: discord.Interaction, prompt: str, seconds: int, guild: GuildSettings) -> Waiting:
        limit = self.bot.pipeline.max_duration(guild)
        if seconds > limit:
            raise UserError(f"A section can be at most {limit} s long on this server.")
        roles = getattr(interaction.user, "roles", [])
        return Waiting(
            author_id=interaction.user.id, role_ids=[role.id for role in roles], prompt=prompt, seconds=seconds,
            application_id=interaction.application_id, token=interaction.token,
            interaction_at=interaction.created_at.timestamp(),
        )

    async def _open_thread(self, interaction: discord.Interaction, title: str) -> tuple[int, str]:
        """The jam's thread (its id, and a note when the jam has to post in the channel instead)."""
        channel = interaction.channel
        if not isinstance(channel, discord.TextChannel):
            return interaction.channel_id or 0, " This channel can't hold threads, so the jam posts here."
        try:
            thread = await channel.create_thread(name=f"🎶 {title}"[:100], type=discord.ChannelType.public_thread,
                                                 auto_archive_duration=AUTO_ARCHIVE_MINUTES)
        except discord.HTTPException as exc:
            log.info("could not open a jam thread in channel %s (%s)", channel.id, exc.status)
            return channel.id, NO_THREAD
        return thread.id, ""


def _store_of(bot: JamBot) -> JamStore:
    """Redis when the bot is scaled out (any process may serve the guild after a restart), else the SQLite file."""
    if isinstance(bot.engine, RemoteEngine):
        return RedisJams(bot.engine.redis.client, bot.engine.redis.keys.prefix,
                         keep_seconds=bot.settings.retention_days * 86400)
    if bot.store.jams is None:
        raise RuntimeError("the store is not open")
    return bot.store.jams


async def setup(bot: JamBot) -> None:
    await bot.add_cog(JamCog(bot))
