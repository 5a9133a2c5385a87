#!/usr/bin/env bash
# Sets up .venv if needed, then labels images on DirectRunner.
# With no arguments: the bundled sample photos -> out/ (EfficientNet-B3 from TF Hub).
# Any arguments are passed to `python -m pipeline.run` (see --help).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_venv.sh
if [ $# -eq 0 ]; then
  set -- --input 'samples/*.jpg' --output out
fi
exec .venv/bin/python -m pipeline.run --runner=DirectRunner "$@"
