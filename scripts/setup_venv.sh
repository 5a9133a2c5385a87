#!/usr/bin/env bash
# Creates (or updates) .venv from the repo's pinned requirements; idempotent, and quiet but
# for a line before and after an install.
# Usage: scripts/setup_venv.sh [requirements file]   (default requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
reqs=${1:-requirements.txt}
# The labeller's pins (requirements-dev.txt where the checkout has it), not Airflow's own.
hash=$(cat requirements.txt $(ls requirements-dev.txt 2>/dev/null) | sha256sum | cut -c1-12)
stamp=.venv/.installed-$hash-$(basename "$reqs")
if [ ! -f "$stamp" ]; then
  # Said, not shown: pip's own output stays quiet (its errors still print).
  echo "setting up .venv: installing $reqs (the first time, or after it changed: a few minutes)..." >&2
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # uv installs the pinned set: downloads in parallel, about half of pip's time here.
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements-setup.txt
  uv=(.venv/bin/uv pip install --quiet --python .venv/bin/python)
  # Every module compiled as it is installed: with PYTHONDONTWRITEBYTECODE set (as on this
  # project's VMs) Python never writes them itself, and each run would compile TensorFlow
  # and Beam anew (a fresh-clone test run took 1.7 times as long without).
  "${uv[@]}" --compile-bytecode -r "$reqs"
  # The project itself, editable: the label-images command runs this checkout's code.
  "${uv[@]}" --no-deps -e .
  touch "$stamp"
  # requirements-dev.txt includes requirements.txt: the runtime set is installed too.
  [ "$(basename "$reqs")" != requirements-dev.txt ] || touch ".venv/.installed-$hash-requirements.txt"
  echo "setting up .venv: done" >&2
fi
