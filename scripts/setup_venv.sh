#!/usr/bin/env bash
# Creates (or updates) .venv from the repo's pinned requirements; idempotent and quiet.
# Usage: scripts/setup_venv.sh [requirements file]   (default requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
reqs=${1:-requirements.txt}
stamp=.venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-12)-$(basename "$reqs")
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$reqs"
  touch "$stamp"
fi
