#!/usr/bin/env bash
# Set up jamgen on Debian/Ubuntu: system packages, then a virtualenv in .venv.
#   scripts/setup.sh          # to run jamgen
#   scripts/setup.sh test     # also the test and lint tools
# Safe to rerun: it skips what is already there (about 6 GB and 5 minutes the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# FFmpeg and its headers: PyAV 11 (an audiocraft dependency) has no wheel for Python 3.11 and builds from source.
# redis-server: the tests start a private one (never the system service); also a local server for REDIS_URL.
apt_packages=(ffmpeg libavformat-dev libavcodec-dev libavdevice-dev libavutil-dev libavfilter-dev
              libswscale-dev libswresample-dev pkg-config gcc redis-server)

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys, venv, ensurepip; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

python_bin="$(pick_python || true)"
[ -n "$python_bin" ] || apt_packages+=(python3 python3-venv python3-dev)

missing=()
for package in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python_bin="${python_bin:-$(pick_python)}" || { echo "jamgen needs Python 3.11" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($python_bin --version)"
  "$python_bin" -m venv .venv
fi

target="."; [ "$extras" = "test" ] && target=".[test]"
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${extras:-run}"
if [ ! -f "$stamp" ]; then
  log "installing jamgen into .venv (first time: ~5 minutes, ~6 GB with torch)"
  .venv/bin/python -m pip install -q --upgrade pip wheel
  .venv/bin/python -m pip install -q -e "$target"
  touch "$stamp"
fi
log "ready: source .venv/bin/activate"
