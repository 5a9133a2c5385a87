#!/usr/bin/env bash
# Sets up .venv with the test tools if needed, lints, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")"
# The report test opens its HTML page in headless Chromium: Debian's package, once,
# installed while pip installs the virtualenv (both mostly wait on downloads).
chromium=
if ! command -v chromium >/dev/null; then
  sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
  { $sudo apt-get update -qq &&
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium >/dev/null; } &
  chromium=$!
fi
# Airflow's own venv for tests/test_airflow.py (docs/airflow.md), meanwhile too.
scripts/setup_airflow.sh &
airflow=$!
scripts/setup_venv.sh requirements-dev.txt
[ -z "$chromium" ] || wait "$chromium"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
wait "$airflow" || echo "run_tests.sh: .venv-airflow was not set up; tests/test_airflow.py says so" >&2
# Two workers, each test file on one of them (a file's servers and cluster stay together):
# the suite waits on servers and child processes as much as it computes. Files go to the
# workers in the order tests/conftest.py gives (longest first), not by their number of tests.
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder \
  --durations=20 "$@"
