#!/usr/bin/env bash
# Submits the labelling job to Apache Flink through Beam's portable Job API.
# ./run_flink.sh --help
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'USAGE'
Usage: ./run_flink.sh (--flink_master HOST:PORT | --flink_master '[local]' | --job_endpoint HOST:PORT)
                      (--image IMAGE | --worker_pool HOST:PORT)
                      --input PATTERN --output ROOT [--flink_version V] [other flags ...]

  --flink_master   the Flink cluster's REST address: this script starts Beam's Flink job
                   server for it on 127.0.0.1 (scripts/flink_job_server.sh fetches it with
                   Maven the first time) and stops it when the run ends. '[local]' runs Flink
                   inside the job server instead (no cluster needed; workers then default to
                   this process, Beam's LOOPBACK environment)
  --job_endpoint   a Beam job server that is already running (for example the
                   apache/beam_flink1.19_job_server container, port 8099), instead
  --flink_version  Flink version of the cluster (default 1.19)
  --flink_job_server_jar
                   use this job-server jar instead of scripts/flink_job_server.sh's
  --job_server_heap
                   the job server's Java heap (default 512m; 1g with '[local]')
  --image          workers run in this container (built from ./Dockerfile):
                   --environment_type=DOCKER --environment_config=IMAGE
  --worker_pool    workers come from a Beam worker pool already running beside each task
                   manager (scripts/flink_cluster.sh starts one with a local cluster):
                   --environment_type=EXTERNAL --environment_config=HOST:PORT
  --input/--output as for python -m pipeline.run; use storage every Flink worker can reach
                   (gs://, or a shared file system)

Every other flag (--model, --date, --parallelism, ...) is passed to python -m pipeline.run.
USAGE
}

master= endpoint= version=1.19 jar= heap= environment=() passthrough=()
source scripts/flags.sh
while [ $# -gt 0 ]; do
  next_flag "$@"
  case "$flag" in
    -h|--help) usage; exit 0 ;;
    --flink_master) take "$@"; master=$value ;;
    --job_endpoint) take "$@"; endpoint=$value ;;
    --flink_version) take "$@"; version=$value ;;
    --flink_job_server_jar) take "$@"; jar=$value ;;
    --job_server_heap) take "$@"; heap=$value ;;
    --image) take "$@"; environment=(--environment_type=DOCKER --environment_config="$value") ;;
    --worker_pool) take "$@"; environment=(--environment_type=EXTERNAL --environment_config="$value") ;;
    *) passthrough+=("$1") ;;
  esac
  shift "$shift_by"
done
if [ "$master" = "[local]" ] && [ ${#environment[@]} -eq 0 ]; then
  environment=(--environment_type=LOOPBACK)
fi
if [ -z "$master$endpoint" ] || [ ${#environment[@]} -eq 0 ]; then
  echo "run_flink.sh: error: give --flink_master or --job_endpoint, and --image or --worker_pool; see --help" >&2
  exit 2
fi
if [ -n "$master" ] && [ -n "$endpoint" ]; then
  echo "run_flink.sh: error: give --flink_master or --job_endpoint, not both; see --help" >&2
  exit 2
fi
if [ -n "$jar" ] && [ ! -f "$jar" ]; then
  echo "run_flink.sh: error: --flink_job_server_jar $jar: no such file" >&2
  exit 2
fi

scripts/setup_venv.sh
command=(.venv/bin/python -m pipeline.run --runner=FlinkRunner --flink_version="$version" "${environment[@]}")
if [ -n "$endpoint" ]; then
  exec "${command[@]}" --job_endpoint="$endpoint" "${passthrough[@]}"
fi

# Our own job server, on loopback, for this run only. Beam's Python FlinkRunner could start
# it too, but the pipeline ends with os._exit, which skips the hook that would stop it.
[ -n "$jar" ] || jar=$(scripts/flink_job_server.sh --flink_version "$version")
[ -n "$heap" ] || heap=$([ "$master" = "[local]" ] && echo 1g || echo 512m)
work=$(mktemp -d "${TMPDIR:-/tmp}/run_flink.XXXXXX")
server= watchdog= job=
cleanup() {
  if [ -n "$watchdog" ]; then # frozen first, so that it starts no new `sleep 1` meanwhile
    kill -STOP "$watchdog" 2>/dev/null || true
    pkill -KILL -P "$watchdog" 2>/dev/null || true
    kill -KILL "$watchdog" 2>/dev/null || true
  fi
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill "$server" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
java "-Xmx$heap" -XX:+UseSerialGC -jar "$jar" --flink-master "$master" --job-host 127.0.0.1 \
  --job-port 0 --artifact-port 0 --expansion-port -1 --artifacts-dir "$work/artifacts" \
  >"$work/job-server.log" 2>&1 </dev/null &
server=$!
# Should this script be killed outright, the job server goes too.
(while kill -0 $$ 2>/dev/null; do sleep 1; done; kill "$server" 2>/dev/null) </dev/null >/dev/null 2>&1 &
watchdog=$!
port=
for _ in $(seq 600); do
  port=$(sed -n 's/.*JobService started on [^ ]*:\([0-9][0-9]*\).*/\1/p' "$work/job-server.log")
  [ -z "$port" ] && kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  tail -5 "$work/job-server.log" >&2
  echo "run_flink.sh: error: Beam's Flink job server ($jar) did not start" >&2
  exit 1
fi

"${command[@]}" --job_endpoint="127.0.0.1:$port" "${passthrough[@]}" &
job=$!
trap 'kill -TERM "$job" 2>/dev/null' TERM
trap 'kill -INT "$job" 2>/dev/null' INT
status=0
while true; do
  wait "$job" && status=0 || status=$?
  kill -0 "$job" 2>/dev/null || break # a trapped signal interrupted the wait: wait again
done
exit "$status"
