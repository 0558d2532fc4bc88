#!/usr/bin/env bash
# Set up (if needed) and run jamgen.
# Until the Discord bot lands, this renders the README's two prompts with `jamgen generate`.
# With no MUSICGEN_MODEL set, it uses a tiny random-weight model (noise, but every part runs offline);
# set MUSICGEN_MODEL=facebook/musicgen-small (or a local checkpoint directory) for real music.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f .env ] && set -a && . ./.env && set +a
model="${MUSICGEN_MODEL:-}"
if [ -z "$model" ]; then
  model="data/tiny-musicgen"
  [ -f "$model/state_dict.bin" ] || .venv/bin/jamgen make-test-model "$model"
fi
if [ $# -eq 0 ]; then
  set -- "lofi slow bpm electro chill" "crazy EDM, heavy bang" --duration 8 --seed 42 -o out/
fi
exec .venv/bin/jamgen generate --model "$model" "$@"
