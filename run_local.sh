#!/usr/bin/env bash
# Sets up .venv if needed, then labels images on DirectRunner.
# With no arguments: the bundled sample photos -> out/ in the current folder (EfficientNet-B3
# from TF Hub). Any arguments are passed to `python -m pipeline.run` (see --help); relative
# paths in them are taken from the folder this command is run in, as label-images takes them.
set -euo pipefail
repo=$(cd "$(dirname "$0")" && pwd)
"$repo/scripts/setup_venv.sh"
if [ $# -eq 0 ]; then
  # The samples' folder as a pattern: its glob characters, if any, stand for themselves.
  samples=$(printf '%s' "$repo/samples" | sed 's/[[*?]/[&]/g')
  set -- --input "$samples/*.jpg" --output out
fi
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} # this checkout's code, from any folder
exec "$repo/.venv/bin/python" -m pipeline.run --runner=DirectRunner "$@"
