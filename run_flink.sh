#!/usr/bin/env bash
# Submits the labelling job to Apache Flink through Beam's portable Job API.
# ./run_flink.sh --help
set -euo pipefail
repo=$(cd "$(dirname "$0")" && pwd)

usage() {
  cat <<'USAGE'
Usage: ./run_flink.sh (--flink_master HOST:PORT | --flink_master '[local]' | --job_endpoint HOST:PORT)
                      (--worker_command PATH | --worker_pool HOST:PORT | --image IMAGE)
                      --input PATTERN --output ROOT [--flink_version V] [other flags ...]

  --flink_master   the Flink cluster's REST address: this script starts Beam's Flink job
                   server for it on 127.0.0.1 (scripts/flink_job_server.sh fetches it with
                   Maven the first time) and stops it when the run ends. It prints the job's
                   id and web UI link, a progress line every --progress_interval seconds,
                   and the restarts at the end; Ctrl-C or SIGTERM cancels the Flink job.
                   '[local]' runs Flink inside the job server instead (no cluster needed;
                   workers then default to this process, Beam's LOOPBACK environment)
  --flink_submit_uber_jar
                   with --flink_master HOST:PORT: no job server here; Beam submits the job
                   server jar with the pipeline in it to the cluster's REST API as one jar
  --job_endpoint   a Beam job server that is already running (for example the
                   apache/beam_flink1.19_job_server container, port 8099), instead. Give
                   its cluster's --flink_master HOST:PORT too for the job id, progress and
                   Ctrl-C cancelling (Beam's job server cancels only its own invocation:
                   the Flink job would go on)
  --flink_version  Flink version of the cluster (default 1.19)
  --flink_job_server_jar
                   use this job-server jar instead of scripts/flink_job_server.sh's
  --job_server_heap
                   the job server's Java heap (default 512m; 1g with '[local]')
  --worker_command each TaskManager starts its own SDK workers with this executable on its
                   host (Beam's PROCESS environment): /opt/apache/beam/boot in the project
                   image, or the DIR/beam-worker that scripts/flink_cluster.sh writes
  --worker_pool    workers come from a Beam worker pool beside each TaskManager, which that
                   TaskManager alone uses (a sidecar container on Kubernetes):
                   --environment_type=EXTERNAL --environment_config=HOST:PORT
  --image          workers run in this container (built from ./Dockerfile):
                   --environment_type=DOCKER --environment_config=IMAGE
  --input/--output as for python -m pipeline.run; use storage every Flink worker can reach
                   (gs://, or a shared file system). Relative local paths (and a --model
                   folder) are taken from the folder this command is run in.

Every other flag (--model, --date, --parallelism, --job_name, ...) is passed to
python -m pipeline.run. Exit status as pipeline.run's; 2 also when the cluster or job
endpoint does not answer or has fewer task slots than --parallelism.
USAGE
}

fail() { echo "run_flink.sh: error: $1" >&2; exit "${2:-2}"; }
absolute() { # a local relative path -> from the folder the user is in
  case "$1" in
    /* | *://* | '') echo "$1" ;;
    *) echo "$PWD/$1" ;;
  esac
}

master= endpoint= version=1.19 jar= heap= environment=() passthrough=() uber= quiet=
parallelism= job_name= interval=10
source "$repo/scripts/flags.sh"
while [ $# -gt 0 ]; do
  next_flag "$@"
  case "$flag" in
    -h|--help) usage; exit 0 ;;
    --flink_master) take "$@"; master=$value ;;
    --job_endpoint) take "$@"; endpoint=$value ;;
    --flink_version) take "$@"; version=$value ;;
    --flink_job_server_jar) take "$@"; jar=$(absolute "$value") ;;
    --flink_submit_uber_jar) uber=1 ;;
    --job_server_heap) take "$@"; heap=$value ;;
    --image) take "$@"; environment=(--environment_type=DOCKER --environment_config="$value") ;;
    --worker_pool) take "$@"; environment=(--environment_type=EXTERNAL --environment_config="$value") ;;
    --worker_command)
      take "$@"
      value=$(absolute "$value")
      [ -x "$value" ] || [ "${value#/opt/apache/beam/}" != "$value" ] ||
        fail "--worker_command $value: no such executable here (it must exist on each TaskManager's host)"
      environment=(--environment_type=PROCESS --environment_config="{\"command\": \"$value\"}")
      ;;
    --input | --output)
      take "$@"
      passthrough+=("$flag=$(absolute "$value")")
      ;;
    --model) # a model name stays a name; a relative folder becomes absolute
      take "$@"
      [ -e "$value" ] && value=$(absolute "$value")
      passthrough+=("--model=$value")
      ;;
    --parallelism) take "$@"; parallelism=$value; passthrough+=("--parallelism=$value") ;;
    --job_name) take "$@"; job_name=$value; passthrough+=("--job_name=$value") ;;
    --progress_interval) take "$@"; interval=$value; passthrough+=("--progress_interval=$value") ;;
    --quiet) quiet=1; passthrough+=("$1") ;;
    *) passthrough+=("$1") ;;
  esac
  shift "$shift_by"
done
if [ "$master" = "[local]" ] && [ ${#environment[@]} -eq 0 ]; then
  environment=(--environment_type=LOOPBACK)
fi
if [ -z "$master$endpoint" ] || [ ${#environment[@]} -eq 0 ]; then
  fail "give --flink_master or --job_endpoint, and --worker_command, --worker_pool or --image; see --help"
fi
if [ "$master" = "[local]" ] && [ -n "$endpoint" ]; then
  fail "--flink_master '[local]' runs its own job server: no --job_endpoint; see --help"
fi
if [ -n "$uber" ] && { [ -z "$master" ] || [ "$master" = "[local]" ]; }; then
  fail "--flink_submit_uber_jar needs --flink_master HOST:PORT; see --help"
fi
if [ -n "$uber" ] && [ -n "$endpoint" ]; then
  fail "--flink_submit_uber_jar submits without a job server: no --job_endpoint; see --help"
fi
if [ -n "$jar" ] && [ ! -f "$jar" ]; then
  fail "--flink_job_server_jar $jar: no such file"
fi

"$repo/scripts/setup_venv.sh"
python=$repo/.venv/bin/python
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} # this checkout's code, from any folder
# Before anything is built: does the cluster (or job server) answer, with slots enough?
reachable() { "$python" -c 'import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()' "$1" 2>/dev/null; }
if [ -n "$endpoint" ]; then
  reachable "$endpoint" || fail "no Beam job server answers at $endpoint (--job_endpoint)"
fi
if [ -n "$master" ] && [ "$master" != "[local]" ]; then
  reachable "$master" || fail "no Flink cluster answers at $master (--flink_master: its REST address)"
  slots=$("$python" -c 'import json, sys, urllib.request
print(json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/overview", timeout=10))["slots-total"])' \
    "$master" 2>/dev/null) || fail "$master answers, but not as Flink's REST API (--flink_master)"
  if [ -n "$parallelism" ] && [ "$parallelism" -gt "$slots" ] 2>/dev/null; then
    fail "--parallelism $parallelism needs $parallelism task slots; the cluster at $master has $slots"
  fi
fi

command=("$python" -m pipeline.run --runner=FlinkRunner --flink_version="$version" "${environment[@]}")
if [ -z "$master" ]; then # no REST address: Beam's job service alone (no cancel on the cluster)
  exec "${command[@]}" --job_endpoint="$endpoint" "${passthrough[@]}"
fi

[ -n "$jar$endpoint" ] || jar=$("$repo/scripts/flink_job_server.sh" --flink_version "$version" --quiet)
[ -n "$heap" ] || heap=$([ "$master" = "[local]" ] && echo 1g || echo 512m)
if [ -z "$job_name" ] && [ "$master" != "[local]" ]; then # how the cluster's REST API finds it
  job_name=image-labeler-$(date -u +%Y%m%d-%H%M%S)-$$
  passthrough+=("--job_name=$job_name")
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/run_flink.XXXXXX")
server= watchdog= watcher= job=
stop_process() { # pid: TERM, then KILL after 5 s
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
  # The watchdog's whole process group at once: it and any `sleep` it has started.
  [ -z "$watchdog" ] || kill -KILL -- "-$watchdog" 2>/dev/null || true
  [ -z "$job" ] || stop_process "$job"
  [ -z "$watcher" ] || stop_process "$watcher"
  [ -z "$server" ] || stop_process "$server"
  rm -rf "$work"
}
trap cleanup EXIT
# Should this script be killed outright, what it started (listed in $work/pids) goes too.
touch "$work/pids"
# In a process group of its own, so that the clean-up below ends it and its children at once.
setsid bash -c 'while kill -0 "$1"; do sleep 1; done; kill $(cat "$2/pids"); rm -rf "$2"' \
  watchdog $$ "$work" </dev/null >/dev/null 2>&1 &
watchdog=$!
disown "$watchdog" # no "Killed ..." line from bash when it is ended

if [ -n "$endpoint" ]; then
  command+=(--job_endpoint="$endpoint")
elif [ -n "$uber" ]; then
  # Beam's own uber-jar path: the job server jar plus the pipeline, uploaded to Flink's REST
  # API as one jar and run there (entry class FlinkPipelineRunner).
  command+=(--flink_master="$master" --flink_job_server_jar="$jar" --flink_submit_uber_jar)
else
  # Our own job server, on loopback, for this run only. Beam's Python FlinkRunner could start
  # it too, but the pipeline ends with os._exit, which skips the hook that would stop it.
  : >"$work/job-server.log" # there before the loop below reads it
  java "-Xmx$heap" -XX:+UseSerialGC -Dbeam.fn.bind_address=127.0.0.1 -jar "$jar" \
    --flink-master "$master" --job-host 127.0.0.1 --job-port 0 --artifact-port 0 \
    --expansion-port -1 --artifacts-dir "$work/artifacts" >"$work/job-server.log" 2>&1 </dev/null &
  server=$!
  echo "$server" >>"$work/pids"
  port=
  for _ in $(seq 600); do
    port=$(sed -n 's/.*JobService started on [^ ]*:\([0-9][0-9]*\).*/\1/p' "$work/job-server.log")
    [ -z "$port" ] && kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$port" ]; then
    tail -5 "$work/job-server.log" >&2
    fail "Beam's Flink job server ($jar) did not start" 1
  fi
  command+=(--job_endpoint="127.0.0.1:$port")
fi

if [ "$master" != "[local]" ]; then
  # Job id, web UI link, progress lines and, at the end, the restarts: from Flink's REST API.
  "$python" -m pipeline.flink watch "$master" "$job_name" "$work/job-id" --interval "$interval" \
    ${quiet:+--quiet} </dev/null &
  watcher=$!
  echo "$watcher" >>"$work/pids"
fi
# The launcher in a session of its own: Ctrl-C on a terminal reaches this script alone,
# which cancels the Flink job before the launcher is told to stop and says what is kept.
setsid "${command[@]}" "${passthrough[@]}" </dev/null &
job=$!
echo "$job" >>"$work/pids"
stopping=
on_signal() { # cancel the Flink job first, then let the launcher stop and say what is kept
  [ -z "$stopping" ] || return 0
  stopping=$1
  if [ "$master" != "[local]" ]; then
    # Paused meanwhile, so that it sees the stop before the job's end (no traceback for a
    # job that "failed" by being cancelled).
    kill -STOP "$job" 2>/dev/null || true
    "$python" -m pipeline.flink cancel "$master" "$job_name" "$work/job-id" || true
  fi
  kill "-$1" "$job" 2>/dev/null || true
  kill -CONT "$job" 2>/dev/null || true
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
status=0
while true; do
  wait "$job" && status=0 || status=$?
  kill -0 "$job" 2>/dev/null || break # a trapped signal interrupted the wait: wait again
done
if [ -n "$stopping" ] && [ "$master" != "[local]" ]; then
  # A job submitted while the signal was handled: cancelled too.
  "$python" -m pipeline.flink cancel "$master" "$job_name" "$work/job-id" || true
fi
if [ -n "$watcher" ]; then # its last line: the job's final state and restarts
  kill -TERM "$watcher" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
  watcher=
fi
exit "$status"
