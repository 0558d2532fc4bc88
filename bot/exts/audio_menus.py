"""Message menu commands: "Continue this track" and "Use as melody", on any message with an audio file.

They do what /generate's ``audio`` option does, without a new upload: the file is checked at once, then a
short form asks for the prompt (filled in with the track's own prompt on a jamgen card) and the seconds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import uploads
from bot.checks import allowed_here
from bot.errors import UserError, report
from bot.exts.generate import Generate
from generation.audio_in import Mode
from generation.jobs import PROMPT_MAX_CHARS

if TYPE_CHECKING:
    from bot.app import JamBot

log = logging.getLogger(__name__)

TITLES = {Mode.CONTINUE: "Continue this track", Mode.MELODY: "Use as melody"}
SECONDS_LABELS = {Mode.CONTINUE: "Seconds to add", Mode.MELODY: "Seconds of music"}
DEFAULT_SECONDS = 8


class AudioForm(discord.ui.Modal):
    """The prompt and the seconds for one message's audio file."""

    def __init__(self, generate: Generate, mode: Mode, attachment: discord.Attachment, model: str,
                 prompt: str) -> None:
        super().__init__(title=TITLES[mode], timeout=900)
        self.generate, self.mode, self.attachment, self.model = generate, mode, attachment, model
        self.prompt: discord.ui.TextInput[AudioForm] = discord.ui.TextInput(
            label="Prompt", custom_id="prompt", placeholder="e.g. lofi beat with soft piano, 80 bpm",
            default=prompt[:PROMPT_MAX_CHARS] or None, max_length=PROMPT_MAX_CHARS,
        )
        self.seconds: discord.ui.TextInput[AudioForm] = discord.ui.TextInput(
            label=SECONDS_LABELS[mode], custom_id="seconds", default=str(DEFAULT_SECONDS), max_length=5,
            required=False,
        )
        self.add_item(self.prompt)
        self.add_item(self.seconds)

    async def on_submit(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        bot = self.generate.bot
        guild = allowed_here(interaction, bot.store)
        fields: dict[str, Any] = {
            "prompt": self.prompt.value, "duration": seconds_of(self.seconds.value), "model": self.model,
            "format": guild.default_format or bot.settings.default_format,
        }
        await self.generate.start_with_audio(interaction, guild, fields, self.attachment, self.mode)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:  # type: ignore[override]
        await report(interaction, error)


def seconds_of(text: str) -> float:
    try:
        return float(text.strip() or DEFAULT_SECONDS)
    except ValueError:
        raise UserError(f"Seconds must be a number, like {DEFAULT_SECONDS} (got {text[:20]!r}).") from None


class AudioMenus(commands.Cog, name="AudioMenus"):
    def __init__(self, bot: JamBot) -> None:
        self.bot = bot
        self.menus = [
            app_commands.ContextMenu(name=TITLES[Mode.CONTINUE], callback=self.continue_track),
            app_commands.ContextMenu(name=TITLES[Mode.MELODY], callback=self.use_as_melody),
        ]

    async def cog_load(self) -> None:
        for menu in self.menus:
            self.bot.tree.add_command(menu)

    async def cog_unload(self) -> None:
        for menu in self.menus:
            self.bot.tree.remove_command(menu.name, type=menu.type)

    async def continue_track(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await self._ask(interaction, message, Mode.CONTINUE)

    async def use_as_melody(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await self._ask(interaction, message, Mode.MELODY)

    async def _ask(self, interaction: discord.Interaction, message: discord.Message, mode: Mode) -> None:
        """Refuse at once what can be (the place, no audio, its type and size), else ask for the prompt."""
        allowed_here(interaction, self.bot.store)
        attachment = uploads.audio_attachment(message)
        uploads.check(attachment, uploads.limits_of(self.bot.settings))
        generate = self.bot.get_cog("Generate")
        assert isinstance(generate, Generate)
        model = generate.model_for(None, mode)
        prompt = await self._prompt_of(message)
        await interaction.response.send_modal(AudioForm(generate, mode, attachment, model, prompt))

    async def _prompt_of(self, message: discord.Message) -> str:
        """The prompt to start from: a jamgen card's own (from the journal), else the message's text."""
        if self.bot.user is not None and message.author.id == self.bot.user.id and message.embeds:
            footer = message.embeds[0].footer.text or ""
            if footer.startswith("job "):
                record = await self.bot.store.journal.get(footer.split()[1])
                if record is not None:
                    return record.request.prompt
        return message.content.strip()


async def setup(bot: JamBot) -> None:
    await bot.add_cog(AudioMenus(bot))
