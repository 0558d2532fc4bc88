#!/usr/bin/env bash
# Set up (if needed) and run the jamgen Discord bot until Ctrl-C / SIGTERM.
# Settings come from .env (see .env.example). Without DISCORD_TOKEN the bot explains how to
# create a bot, invite it and set the token, then exits.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/jamgen run "$@"
