"""Embeds: the result card and the help page."""

from __future__ import annotations

import discord

from bot.ui.text import format_seconds, safe
from generation.jobs import JobRequest

LICENCE_NOTE = "MusicGen weights: CC-BY-NC 4.0 (non-commercial use only)"
COLOUR = discord.Colour.from_rgb(88, 101, 242)


def sampling_text(request: JobRequest) -> str:
    s = request.sampling
    top = f"top-k {s.top_k}" if s.top_p == 0 else f"top-p {s.top_p:g}"
    return f"temperature {s.temperature:g} · {top} · cfg {s.cfg_coef:g}"


def model_name(model: str) -> str:
    return model.rsplit("/", 1)[-1] or model


def result_embed(
    request: JobRequest, *, job_id: str, user_id: int, queued_for: float, generated_in: float, length: float, title: str
) -> discord.Embed:
    """The card under a finished track. Every value fits Discord's limits (title 256, field 1,024)."""
    embed = discord.Embed(title=title[:256], description=safe(request.prompt, 1000), colour=COLOUR)
    embed.add_field(name="Requested by", value=f"<@{user_id}>")
    embed.add_field(name="Seed", value=f"`{request.seed}`")
    embed.add_field(name="Duration", value=f"{length:.1f} s")
    embed.add_field(name="Sampling", value=sampling_text(request), inline=False)
    if request.audio_note:
        embed.add_field(name="Audio in", value=safe(request.audio_note, 300), inline=False)
    embed.add_field(name="Model", value=safe(model_name(request.model), 100))
    embed.add_field(name="Queued", value=format_seconds(queued_for))
    embed.add_field(name="Generated in", value=format_seconds(generated_in))
    embed.set_footer(text=f"job {job_id} · {LICENCE_NOTE}")
    return embed


def help_embed(
    *, max_duration: int, max_jobs: int, rate_count: int, rate_window: float, models: list[str]
) -> discord.Embed:
    embed = discord.Embed(title="jamgen: text to music", colour=COLOUR)
    embed.description = (
        "Describe some music and jamgen renders it with Meta's MusicGen, then posts the audio here."
    )
    embed.add_field(
        name="Commands",
        value=(
            "`/generate prompt [duration] [seed] [temperature] [top_k] [top_p] [cfg] [format] [model] [audio] [mode]"
            " [variants]` — queue a track; with `audio`, continue that file (or follow its melody); with"
            " `variants`, 2–4 takes to pick a favourite from\n"
            "Apps menu on a message with audio: *Continue this track*, *Use as melody*\n"
            "`/queue` — your jobs, their positions and ETAs\n"
            "`/cancel [job]` — cancel your queued or running job\n"
            "`/jam start|add|undo|export|end` — a shared track, built in turns in a thread\n"
            "`/jamgen settings …` — server settings (Manage Server)\n"
            "Buttons under a result: 🔁 regenerate (new seed), 🎲 variations (3 at once), "
            "⏩ extend (continue the clip), 🎶 start a jam from it"
        ),
        inline=False,
    )
    embed.add_field(
        name="Limits here",
        value=(
            f"Up to {max_duration} s per track; {max_jobs} jobs queued or running per person; "
            f"{rate_count} requests per {format_seconds(rate_window)}. "
            "The queue is fair: it takes turns between people."
        ),
        inline=False,
    )
    embed.add_field(name="Models", value=", ".join(safe(model_name(m), 60) for m in models)[:1024], inline=False)
    embed.add_field(
        name="Licence",
        value=(
            "The MusicGen model weights are released under CC-BY-NC 4.0: what you make here is for"
            " non-commercial use. The jamgen code is MIT."
        ),
        inline=False,
    )
    return embed
