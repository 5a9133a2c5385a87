#!/usr/bin/env bash
# Submits the labelling job to Apache Flink through Beam's portable Job API.
# ./run_flink.sh --help
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'USAGE'
Usage: ./run_flink.sh (--flink_master HOST:PORT | --job_endpoint HOST:PORT)
                      (--image IMAGE | --worker_pool HOST:PORT)
                      --input PATTERN --output ROOT [--flink_version V] [other flags ...]

  --flink_master   the Flink cluster's REST address; Beam starts its Flink job server for it,
                   downloading the job-server jar from Maven Central the first time (where
                   that is unreachable, add --flink_job_server_jar /path/to/job-server.jar)
  --job_endpoint   a Beam job server that is already running (for example the
                   apache/beam_flink1.19_job_server container, port 8099), instead
  --flink_version  Flink version of the cluster (default 1.19)
  --image          workers run in this container (built from ./Dockerfile):
                   --environment_type=DOCKER --environment_config=IMAGE
  --worker_pool    workers come from a Beam worker pool already running beside each task
                   manager (python -m apache_beam.runners.worker.worker_pool_main):
                   --environment_type=EXTERNAL --environment_config=HOST:PORT
  --input/--output as for python -m pipeline.run; use storage every Flink worker can reach
                   (gs://, or a shared file system)

Every other flag (--model, --date, --parallelism, ...) is passed to python -m pipeline.run.
USAGE
}

master= endpoint= version=1.19 environment=() passthrough=()
source scripts/flags.sh
while [ $# -gt 0 ]; do
  next_flag "$@"
  case "$flag" in
    -h|--help) usage; exit 0 ;;
    --flink_master) take "$@"; master=$value ;;
    --job_endpoint) take "$@"; endpoint=$value ;;
    --flink_version) take "$@"; version=$value ;;
    --image) take "$@"; environment=(--environment_type=DOCKER --environment_config="$value") ;;
    --worker_pool) take "$@"; environment=(--environment_type=EXTERNAL --environment_config="$value") ;;
    *) passthrough+=("$1") ;;
  esac
  shift "$shift_by"
done
if [ -z "$master$endpoint" ] || [ ${#environment[@]} -eq 0 ]; then
  echo "run_flink.sh: error: give --flink_master or --job_endpoint, and --image or --worker_pool; see --help" >&2
  exit 2
fi

args=(--runner=FlinkRunner --flink_version="$version" "${environment[@]}")
if [ -n "$endpoint" ]; then
  args+=(--job_endpoint="$endpoint")
else
  args+=(--flink_master="$master")
fi

scripts/setup_venv.sh
exec .venv/bin/python -m pipeline.run "${args[@]}" "${passthrough[@]}"
