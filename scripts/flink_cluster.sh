#!/usr/bin/env bash
# A real Flink cluster on this machine (a JobManager and TaskManagers, each TaskManager
# starting its own Python SDK workers), all on 127.0.0.1, for run_flink.sh and
# tests/test_flink.py. scripts/flink_cluster.sh --help
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

usage() {
  cat <<'USAGE'
Usage: scripts/flink_cluster.sh start [--taskmanagers 1] [--slots 2] [--rest_port 8081]
                                      [--dir DIR] [--watch_pid PID]
       scripts/flink_cluster.sh stop [--dir DIR]

start  fetches Flink's own distribution the first time (the lib/ jars of the PyPI package
       apache-flink-libraries of the job server's Flink version, with pip, into the cache,
       apart from the project's .venv), then starts a JobManager and N TaskManagers
       (separate JVMs, small heaps), every server on 127.0.0.1. Each TaskManager starts
       and stops its own Python SDK workers (Beam's PROCESS environment: DIR/beam-worker runs
       the project's .venv Python), so --parallelism up to TASKMANAGERS x SLOTS works.
       It refuses to start (exit 2, nothing left running) when the REST port is taken or a
       process of an earlier start in DIR still runs. It returns once Flink's REST API lists
       the TaskManagers, and prints the flags to pass to run_flink.sh. Failed tasks are
       restarted (fixed delay, 3 attempts, 2 s apart).
stop   stops every process that start started in DIR and still is that process (TERM, then
       KILL after 10 s), and removes Flink's working files there (blob caches, spills).

  --flink_version     Flink minor version (default 1.19, the job server's; see
                      scripts/flink_job_server.sh)
  --taskmanagers      TaskManager processes (default 1)
  --slots             task slots per TaskManager (default 2)
  --rest_port         Flink REST port, the --flink_master of run_flink.sh (default 8081)
  --dir               the cluster's folder: config, logs, pid files (default: the cache's
                      flink/cluster/)
  --watch_pid         stop the cluster by itself when this process ends (tests pass their own)

Cache: $BEAM_IMAGE_LABELER_CACHE, else $XDG_CACHE_HOME/beam-image-labeler, else
~/.cache/beam-image-labeler. Needs java (11+) and PyPI once. Exit status 2 for a bad flag, a
taken port or a cluster still running in DIR, 3 when java or the distribution is missing
(one line on stderr says which).
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
flink=1.19 taskmanagers=1 slots=2 rest_port=8081 dir=$cache/flink/cluster watch=
source "$here/flags.sh"
while [ $# -gt 0 ]; do
  next_flag "$@"
  case "$flag" in
    -h|--help) usage; exit 0 ;;
    --flink_version) take "$@"; flink=$value ;;
    --taskmanagers) take "$@"; taskmanagers=$value ;;
    --slots) take "$@"; slots=$value ;;
    --rest_port) take "$@"; rest_port=$value ;;
    --dir) take "$@"; dir=$value ;;
    --watch_pid) take "$@"; watch=$value ;;
    *) die "unknown flag $1; see --help" ;;
  esac
  shift "$shift_by"
done
for n in "$taskmanagers" "$slots" "$rest_port" ${watch:+"$watch"}; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "'$n' is not a positive whole number; see --help"
done
[[ $flink =~ ^[0-9]+\.[0-9]+$ ]] || die "--flink_version is MAJOR.MINOR, like 1.19; got '$flink'"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# A pid file holds "PID START": START is the process's start time (field 22 of
# /proc/PID/stat), so a pid the kernel has since given to another process is never signalled.
started_at() { local stat; stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; stat=${stat##*) }; set -- $stat; echo "${20}"; }
record() { echo "$1 $(started_at "$1")" >"$dir/$2.pid"; }
ours() { # pidfile -> prints the pid when that process still runs
  local pid start
  read -r pid start <"$1" 2>/dev/null || return 1
  [ -n "$pid" ] && [ "$(started_at "$pid" 2>/dev/null)" = "$start" ] && echo "$pid"
}

# Each process was started in a process group of its own (setsid), so its children (a
# TaskManager's SDK workers) share its pid as group id. A group whose leader has died is
# still ours: the kernel gives no new process a pid that is some group's id.
group_left() { # pidfile -> prints the group id when the leader is gone but the group is not
  local pid
  read -r pid _ <"$1" 2>/dev/null || return 1
  [ -n "$pid" ] && [ ! -e "/proc/$pid" ] && kill -0 -- "-$pid" 2>/dev/null && echo "$pid"
}

stop_all() {
  local pidfile pid waited
  for pidfile in "$dir"/*.pid; do
    [ -f "$pidfile" ] || continue
    # The watchdog runs this very command when its process ends: not itself.
    if pid=$(ours "$pidfile") && [ "$pid" != "$$" ]; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    elif pid=$(group_left "$pidfile"); then
      kill -TERM -- "-$pid" 2>/dev/null || true
    fi
  done
  for pidfile in "$dir"/*.pid; do
    [ -f "$pidfile" ] || continue
    if pid=$(ours "$pidfile") && [ "$pid" != "$$" ]; then
      waited=0
      while ours "$pidfile" >/dev/null && [ $waited -lt 100 ] &&
        ! grep -q '^[0-9]* (.*) Z' "/proc/$pid/stat" 2>/dev/null; do
        sleep 0.1
        waited=$((waited + 1))
      done
      if ours "$pidfile" >/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
    if pid=$(group_left "$pidfile"); then
      sleep 1
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  # Flink's working files: blob caches (the job's jars, per job and TaskManager), spills.
  rm -rf "$dir/tmp"
}

if [ "$action" = stop ]; then
  stop_all
  echo "flink_cluster.sh: stopped the cluster in $dir" >&2
  exit 0
fi

# --- start ---
running=()
for pidfile in "$dir"/*.pid; do
  [ -f "$pidfile" ] && ours "$pidfile" >/dev/null && running+=("$(basename "$pidfile" .pid)")
done
if [ ${#running[@]} -gt 0 ]; then
  die "a cluster started in $dir still runs (${running[*]}); stop it first: $0 stop --dir $dir"
fi
rm -f "$dir"/*.pid
if ! python3 -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$rest_port" 2>/dev/null; then
  die "port $rest_port (--rest_port) is taken on 127.0.0.1; stop what uses it or choose another --rest_port"
fi
command -v java >/dev/null || die "unavailable: 'java' is not on PATH (Flink needs Java 11+)" 3
case "$flink" in
  1.19) version=1.19.0 ;; # the Flink that beam-runners-flink-1.19 2.62.0 is built against
  *) version=$flink.0 ;;
esac
dist=$cache/flink/flink-$version
if [ ! -f "$dist/.complete" ]; then
  echo "flink_cluster.sh: fetching Flink $version (apache-flink-libraries from PyPI) into $dist" >&2
  # Made whole beside the cache, then renamed into place in one step: starts that fetch at the
  # same time (tests on two workers) each make their own, the first renamed in stays, and no
  # start ever sees a half-made or removed distribution.
  mkdir -p "$cache/flink"
  fetch=$(mktemp -d "$cache/flink/.fetch.XXXXXX")
  trap 'rm -rf "$fetch"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    "apache-flink-libraries==$version" -d "$fetch" >"$fetch/pip.log" 2>&1 ||
    { tail -3 "$fetch/pip.log" >&2; die "unavailable: pip could not fetch apache-flink-libraries==$version" 3; }
  tar -xzf "$fetch"/apache-flink-libraries-*.tar.gz -C "$fetch" --strip-components=2 \
    --wildcards '*/deps/lib/*' '*/deps/bin/*'
  mkdir "$fetch/dist"
  mv "$fetch/lib" "$fetch/bin" "$fetch/dist/"
  touch "$fetch/dist/.complete"
  # In place unless another start's is; a folder there without .complete (a fetch cut short by
  # an earlier version of this script) is moved aside first.
  python3 -c 'import os, sys
made, dist = sys.argv[1], sys.argv[2]
for _ in range(5):
    try:
        os.rename(made, dist)
        break
    except OSError:
        if os.path.isfile(os.path.join(dist, ".complete")):
            break
        try:
            os.rename(dist, made + ".unfinished")
        except OSError:
            pass
else:
    sys.exit(f"flink_cluster.sh: error: could not put Flink in place at {dist}")' "$fetch/dist" "$dist"
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
# Beam runs a batch job as Flink batch: every blocking result partition takes this many
# network buffers (Flink's default, 512, is 16 MB each: --parallelism 2 on one TaskManager
# ran out). 64 of 32 KB each are plenty for image URIs and label rows.
taskmanager.network.sort-shuffle.min-buffers: 64
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
  setsid java $jvm ${java_opts:-} -XX:+UseSerialGC -Dlog.file="$dir/log/$name.log" \
    -Dlog4j.configurationFile="file:$dir/conf/log4j.properties" -cp "$dist/lib/*" \
    "$main" --configDir "$dir/conf" $dynamic "$@" >"$dir/log/$name.out" 2>&1 </dev/null &
  record $! "$name"
}

# Each TaskManager starts its own SDK workers with this (Beam's PROCESS environment): the
# project's .venv Python as Beam's SDK harness (pipeline/flink.py worker).
cat >"$dir/beam-worker" <<BOOT
#!/bin/sh
PATH="$repo/.venv/bin:\$PATH" PYTHONPATH="$repo" exec "$python" -m pipeline.flink worker "\$@"
BOOT
chmod 755 "$dir/beam-worker"

trap 'stop_all' ERR
launch jobmanager org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint GET_JM_RESOURCE_PARAMS
# The Fn API servers a TaskManager opens for its workers listen on loopback only (see
# scripts/flink_job_server.sh); on a cluster of several hosts this property is left unset.
java_opts=-Dbeam.fn.bind_address=127.0.0.1
for i in $(seq 1 "$taskmanagers"); do
  launch "taskmanager-$i" org.apache.flink.runtime.taskexecutor.TaskManagerRunner GET_TM_RESOURCE_PARAMS \
    -D "taskmanager.resource-id=taskmanager-$i"
done
if [ -n "$watch" ]; then
  setsid bash -c 'while kill -0 "$1" 2>/dev/null && [ -f "$2/jobmanager.pid" ]; do sleep 1; done
    [ -f "$2/jobmanager.pid" ] && exec "$3" stop --dir "$2"' \
    watchdog "$watch" "$dir" "$here/flink_cluster.sh" >/dev/null 2>&1 </dev/null &
  record $! watchdog
fi

# Up when the REST API lists every TaskManager, and every process started is still ours (so
# a JobManager that died on a taken port is not mistaken for another cluster answering).
if ! "$python" - "$rest_port" "$taskmanagers" "$dir" <<'PY'; then
import json, os, sys, time, urllib.request
rest, wanted, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def check_alive():
    for name in os.listdir(folder):
        if name.endswith(".pid"):
            pid = int(open(os.path.join(folder, name)).read().split()[0])
            try:
                state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            except OSError:
                state = "gone"
            if state in ("gone", "Z"):
                sys.exit(f"flink_cluster.sh: error: {name[:-4]} exited; see {folder}/log/")


deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    check_alive()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{rest}/taskmanagers", timeout=2) as r:
            registered = len(json.load(r)["taskmanagers"])
        if registered >= wanted:
            time.sleep(1)
            check_alive()
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(f"flink_cluster.sh: error: the cluster did not come up in 120 s; see {folder}/log/")
PY
  grep -h -m3 -E 'Exception|Error' "$dir"/log/*.log "$dir"/log/*.out 2>/dev/null | cut -c1-300 >&2 || true
  stop_all
  exit 1
fi
trap - ERR
echo "Flink $version is up in $dir: ./run_flink.sh --flink_master 127.0.0.1:$rest_port" \
  "--worker_command $dir/beam-worker ... (web UI http://127.0.0.1:$rest_port;" \
  "stop: scripts/flink_cluster.sh stop$([ "$dir" = "$cache/flink/cluster" ] || echo " --dir $dir"))"
