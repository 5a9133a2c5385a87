#!/usr/bin/env bash
# A real Flink cluster on this machine (JobManager, TaskManagers, a Beam worker pool), all on
# 127.0.0.1, for run_flink.sh and tests/test_flink.py. scripts/flink_cluster.sh --help
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

usage() {
  cat <<'USAGE'
Usage: scripts/flink_cluster.sh start [--taskmanagers 1] [--slots 2] [--rest_port 8081]
                                      [--worker_pool_port 50000] [--dir DIR] [--watch_pid PID]
       scripts/flink_cluster.sh stop [--dir DIR]

start  fetches Flink's own distribution the first time (the lib/ jars of the PyPI package
       apache-flink-libraries of the job server's Flink version, with pip, into the cache,
       apart from the project's .venv), then starts a JobManager, N TaskManagers (separate
       JVMs, small heaps) and a Beam worker pool for EXTERNAL workers (the project's .venv
       Python, one SDK process per TaskManager environment), every server on 127.0.0.1.
       It returns once Flink's REST API lists the TaskManagers, and prints the flags to pass
       to run_flink.sh. Failed tasks are restarted (fixed delay, 3 attempts, 2 s apart).
stop   stops every process that start started in DIR (TERM, then KILL after 10 s).

  --flink_version     Flink minor version (default 1.19, the job server's; see
                      scripts/flink_job_server.sh)
  --taskmanagers      TaskManager processes (default 1)
  --slots             task slots per TaskManager (default 2)
  --rest_port         Flink REST port, the --flink_master of run_flink.sh (default 8081)
  --worker_pool_port  the worker pool's port, the --worker_pool of run_flink.sh (default 50000)
  --dir               the cluster's folder: config, logs, pid files (default: the cache's
                      flink/cluster/)
  --watch_pid         stop the cluster by itself when this process ends (tests pass their own)

Cache: $BEAM_IMAGE_LABELER_CACHE, else $XDG_CACHE_HOME/beam-image-labeler, else
~/.cache/beam-image-labeler. Needs java (11+) and PyPI once. Exit status 2 for a bad flag,
3 when java or the distribution is missing (one line on stderr says which).
USAGE
}

die() { echo "flink_cluster.sh: error: $1" >&2; exit "${2:-2}"; }
[ $# -ge 1 ] || die "give start or stop; see --help"
action=$1
shift
case "$action" in
  -h|--help) usage; exit 0 ;;
  start|stop) ;;
  *) die "unknown command '$action' (start or stop); see --help" ;;
esac

cache=${BEAM_IMAGE_LABELER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/beam-image-labeler}
flink=1.19 taskmanagers=1 slots=2 rest_port=8081 pool_port=50000 dir=$cache/flink/cluster watch=
source "$here/flags.sh"
while [ $# -gt 0 ]; do
  next_flag "$@"
  case "$flag" in
    -h|--help) usage; exit 0 ;;
    --flink_version) take "$@"; flink=$value ;;
    --taskmanagers) take "$@"; taskmanagers=$value ;;
    --slots) take "$@"; slots=$value ;;
    --rest_port) take "$@"; rest_port=$value ;;
    --worker_pool_port) take "$@"; pool_port=$value ;;
    --dir) take "$@"; dir=$value ;;
    --watch_pid) take "$@"; watch=$value ;;
    *) die "unknown flag $1; see --help" ;;
  esac
  shift "$shift_by"
done
for n in "$taskmanagers" "$slots" "$rest_port" "$pool_port" ${watch:+"$watch"}; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "'$n' is not a positive whole number; see --help"
done
[[ $flink =~ ^[0-9]+\.[0-9]+$ ]] || die "--flink_version is MAJOR.MINOR, like 1.19; got '$flink'"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_all() {
  local pidfile pid waited
  for pidfile in "$dir"/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    # The watchdog runs this very command when its process ends: not itself.
    if [ "$pid" != "$$" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for pidfile in "$dir"/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    waited=0
    while [ "$pid" != "$$" ] && kill -0 "$pid" 2>/dev/null && [ $waited -lt 100 ]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    if [ "$pid" != "$$" ]; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

if [ "$action" = stop ]; then
  stop_all
  echo "flink_cluster.sh: stopped the cluster in $dir" >&2
  exit 0
fi

# --- start ---
alive "$dir/jobmanager.pid" && die "a cluster is already running in $dir; stop it first"
command -v java >/dev/null || die "unavailable: 'java' is not on PATH (Flink needs Java 11+)" 3
case "$flink" in
  1.19) version=1.19.0 ;; # the Flink that beam-runners-flink-1.19 2.62.0 is built against
  *) version=$flink.0 ;;
esac
dist=$cache/flink/flink-$version
if [ ! -f "$dist/.complete" ]; then
  echo "flink_cluster.sh: fetching Flink $version (apache-flink-libraries from PyPI) into $dist" >&2
  fetch=$(mktemp -d "${TMPDIR:-/tmp}/flink-dist.XXXXXX")
  trap 'rm -rf "$fetch"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    "apache-flink-libraries==$version" -d "$fetch" >"$fetch/pip.log" 2>&1 ||
    { tail -3 "$fetch/pip.log" >&2; die "unavailable: pip could not fetch apache-flink-libraries==$version" 3; }
  tar -xzf "$fetch"/apache-flink-libraries-*.tar.gz -C "$fetch" --strip-components=2 \
    --wildcards '*/deps/lib/*' '*/deps/bin/*'
  rm -rf "$dist"
  mkdir -p "$dist"
  mv "$fetch/lib" "$fetch/bin" "$dist/"
  touch "$dist/.complete"
  rm -rf "$fetch"
  trap - EXIT
fi

python=$repo/.venv/bin/python
[ -x "$python" ] || "$repo/scripts/setup_venv.sh"
rpc_port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$dir/conf" "$dir/log" "$dir/tmp"
rm -f "$dir"/log/*
cat >"$dir/conf/config.yaml" <<CONF
# Written by scripts/flink_cluster.sh: a one-machine cluster on loopback.
jobmanager.rpc.address: 127.0.0.1
jobmanager.rpc.port: $rpc_port
jobmanager.bind-host: 127.0.0.1
rest.address: 127.0.0.1
rest.bind-address: 127.0.0.1
rest.port: $rest_port
taskmanager.host: 127.0.0.1
taskmanager.bind-host: 127.0.0.1
taskmanager.rpc.port: 0
taskmanager.data.port: 0
blob.server.port: 0
jobmanager.memory.process.size: 768m
taskmanager.memory.process.size: 1280m
taskmanager.memory.network.min: 128m
taskmanager.memory.network.max: 128m
taskmanager.memory.managed.size: 16m
taskmanager.numberOfTaskSlots: $slots
parallelism.default: 1
cluster.evenly-spread-out-slots: true
io.tmp.dirs: $dir/tmp
heartbeat.interval: 1000
heartbeat.timeout: 20000
restart-strategy.type: fixed-delay
restart-strategy.fixed-delay.attempts: 3
restart-strategy.fixed-delay.delay: 2 s
jobmanager.execution.failover-strategy: region
metrics.fetcher.update-interval: 500
CONF
cat >"$dir/conf/log4j.properties" <<'LOG'
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = File
appender.file.name = File
appender.file.type = File
appender.file.fileName = ${sys:log.file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{HH:mm:ss,SSS} %-5p %-60c - %m%n
LOG

# Flink's own sizing (what its bin/ scripts do): JVM flags, then -D settings to pass on.
resources() {
  java -cp "$dist/bin/bash-java-utils.jar:$dist/lib/*" org.apache.flink.runtime.util.bash.BashJavaUtils \
    "$1" --configDir "$dir/conf" 2>"$dir/log/sizing.err" | sed -n 's/^BASH_JAVA_UTILS_EXEC_RESULT://p'
}
launch() { # name main-class resources-command [-D key=value ...]
  local name=$1 main=$2 sizing jvm dynamic
  sizing=$(resources "$3") || true
  jvm=$(sed -n 1p <<<"$sizing")
  dynamic=$(sed -n 2p <<<"$sizing")
  [ -n "$jvm" ] || { cat "$dir/log/sizing.err" >&2; die "Flink could not size the $name's memory" 1; }
  shift 3
  # shellcheck disable=SC2086 # the sizing strings are word lists by design
  setsid java $jvm -XX:+UseSerialGC -Dlog.file="$dir/log/$name.log" \
    -Dlog4j.configurationFile="file:$dir/conf/log4j.properties" -cp "$dist/lib/*" \
    "$main" --configDir "$dir/conf" $dynamic "$@" >"$dir/log/$name.out" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}

trap 'stop_all' ERR
launch jobmanager org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint GET_JM_RESOURCE_PARAMS
for i in $(seq 1 "$taskmanagers"); do
  launch "taskmanager-$i" org.apache.flink.runtime.taskexecutor.TaskManagerRunner GET_TM_RESOURCE_PARAMS \
    -D "taskmanager.resource-id=taskmanager-$i"
done
# Beam's worker pool (worker_pool_main) with its gRPC server on 127.0.0.1 instead of [::];
# each worker it starts is `python` from PATH: the project's .venv.
pool='
import re, sys, time
import grpc._server
add = grpc._server._Server.add_insecure_port
grpc._server._Server.add_insecure_port = lambda self, address: add(
    self, re.sub(r"^(\[::\]|0\.0\.0\.0|localhost)(?=:)", "127.0.0.1", address))
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
_, server = BeamFnExternalWorkerPoolServicer.start(use_process=True, port=int(sys.argv[1]))
while True:  # the server lives as long as this reference
    time.sleep(3600)
'
PATH="$repo/.venv/bin:$PATH" setsid "$python" -c "$pool" "$pool_port" \
  >"$dir/log/worker-pool.log" 2>&1 </dev/null &
echo $! >"$dir/worker-pool.pid"
if [ -n "$watch" ]; then
  setsid bash -c 'while kill -0 "$1" 2>/dev/null && [ -f "$2/jobmanager.pid" ]; do sleep 1; done
    [ -f "$2/jobmanager.pid" ] && exec "$3" stop --dir "$2"' \
    watchdog "$watch" "$dir" "$here/flink_cluster.sh" >/dev/null 2>&1 </dev/null &
  echo $! >"$dir/watchdog.pid"
fi

# Up when the REST API lists every TaskManager and the worker pool answers.
if ! "$python" - "$rest_port" "$taskmanagers" "$pool_port" "$dir" <<'PY'; then
import json, os, socket, sys, time, urllib.request
rest, wanted, pool, folder = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    for name in os.listdir(folder):
        if name.endswith(".pid"):
            pid = int(open(os.path.join(folder, name)).read())
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                sys.exit(f"flink_cluster.sh: {name[:-4]} exited; see {folder}/log/")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{rest}/taskmanagers", timeout=2) as r:
            registered = len(json.load(r)["taskmanagers"])
        socket.create_connection(("127.0.0.1", pool), timeout=1).close()
        if registered >= wanted:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(f"flink_cluster.sh: the cluster did not come up in 120 s; see {folder}/log/")
PY
  tail -5 "$dir"/log/*.out "$dir/log/jobmanager.log" >&2 2>/dev/null || true
  stop_all
  exit 1
fi
trap - ERR
echo "Flink $version is up in $dir: ./run_flink.sh --flink_master 127.0.0.1:$rest_port" \
  "--worker_pool 127.0.0.1:$pool_port ... (web UI http://127.0.0.1:$rest_port;" \
  "stop: scripts/flink_cluster.sh stop$([ "$dir" = "$cache/flink/cluster" ] || echo " --dir $dir"))"
