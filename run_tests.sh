#!/usr/bin/env bash
# Sets up .venv with the test tools if needed, lints, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_venv.sh requirements-dev.txt
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q "$@"
