#!/usr/bin/env bash
# Set up (if needed), lint, type-check and run the whole test suite: the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # tests never download weights
.venv/bin/ruff check .
.venv/bin/mypy bot generation jamgen
.venv/bin/python -m pytest "$@"
