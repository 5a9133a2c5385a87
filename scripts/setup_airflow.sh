#!/usr/bin/env bash
# Creates (or recreates) .venv-airflow, Apache Airflow's own virtualenv (docs/airflow.md), from
# requirements-airflow.txt. Idempotent as scripts/setup_venv.sh is for .venv: a stamp in the
# venv names the hash of the file it was built from, and nothing is done while it matches.
# Airflow never goes into .venv (its pins and the labeller's conflict): the DAG's task runs
# the labeller through run_local.sh or run_flink.sh, with .venv's Python.
# Usage: scripts/setup_airflow.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-airflow
reqs=requirements-airflow.txt
stamp=$venv/.installed-$(sha256sum <"$reqs" | cut -c1-12)
[ ! -f "$stamp" ] || exit 0
echo "setting up $venv: installing Apache Airflow from $reqs (the first time, or after it changed: a few minutes)..." >&2
# Built anew, so that what is installed is the file's set and nothing else; out of git's and
# ruff's sight from the start (as Python 3.13's venv does itself).
rm -rf "$venv"
mkdir "$venv"
echo '*' >"$venv/.gitignore"
python3 -m venv "$venv"
# The file pins every package: --no-deps installs exactly those, with no resolving. Not
# compiled: of its 1.6 GB Airflow imports a small part, whose bytecode Python writes on first
# use (unless PYTHONDONTWRITEBYTECODE is set; then each `airflow` command takes about 5 s more).
"$venv/bin/pip" install --quiet --disable-pip-version-check -r requirements-setup.txt # uv
"$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --no-deps -r "$reqs"
touch "$stamp"
echo "setting up $venv: done" >&2
