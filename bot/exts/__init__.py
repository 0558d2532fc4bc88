"""Feature modules, loaded as discord.py extensions by :class:`bot.app.JamBot`."""

EXTENSIONS = (
    "bot.exts.generate", "bot.exts.takes", "bot.exts.audio_menus", "bot.exts.queue", "bot.exts.admin", "bot.exts.help",
    "bot.exts.jam",
)
