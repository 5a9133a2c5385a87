#!/usr/bin/env bash
# Creates (or updates) .venv from the repo's pinned requirements; idempotent and quiet.
# Usage: scripts/setup_venv.sh [requirements file]   (default requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
reqs=${1:-requirements.txt}
hash=$(cat requirements*.txt | sha256sum | cut -c1-12)
stamp=.venv/.installed-$hash-$(basename "$reqs")
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$reqs"
  # The project itself, editable: the label-images command runs this checkout's code.
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
  touch "$stamp"
  # requirements-dev.txt includes requirements.txt: the runtime set is installed too.
  [ "$(basename "$reqs")" != requirements-dev.txt ] || touch ".venv/.installed-$hash-requirements.txt"
fi
