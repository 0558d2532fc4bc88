"""jamgen's generation engine: prompts in, compressed audio out.

This package never imports discord: the bot is one client of it, the CLI another.
"""
