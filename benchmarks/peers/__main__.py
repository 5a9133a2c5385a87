"""The pipeline beside its peers, measured (not a test): the whole process of `python -m
pipeline.run`, of the plain script (benchmarks/simple_script.py) and of the same job in Ray
Data and in Daft (ray_data_job.py, daft_job.py beside this file), on N photos with the
near-zero model, runs alternated so all meet the same load.

python -m benchmarks.peers [--n 3000] [--rounds 3] [--python PEERS_PYTHON] [--work DIR]

PEERS_PYTHON: a virtualenv's python with requirements.txt and requirements-peers.txt (Ray and
Daft are not in the project's). Prints one JSON object: for each tool the median wall time and
CPU seconds (user + system, of every process it started, Ray's and Daft's workers included) and
the ratios tool wall / pipeline wall.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow.dataset as ds

from benchmarks.run import ENV
from benchmarks.workload import build_trivial, made_once, make_photos

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = ("pipeline", "simple_script", "ray_data", "daft")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reap_orphans(grace_s: float = 60.0) -> None:
    """Waits for the processes a run left behind (reparented to us, the subreaper) so that
    their CPU counts; ends any still there after grace_s."""
    deadline = time.time() + grace_s
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0]:
                continue
        except ChildProcessError:
            return
        if time.time() > deadline:
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
                    if int(f.read().rpartition(")")[2].split()[1]) == os.getpid():
                        print(f"ending pid {pid}, left behind", file=sys.stderr)
                        os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)


def one_run(name: str, cmd: list[str], out: str, n: int, log: str) -> dict:
    """The command as a user runs it: wall time until it exits, CPU of it and all it started."""
    shutil.rmtree(out, ignore_errors=True)
    if os.path.isfile(out):
        os.remove(out)
    cpu_before = children_cpu()
    with open(log, "w") as err:
        started = time.time()
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        _, status, _ = os.wait4(proc.pid, 0)
        wall = time.time() - started
    reap_orphans()
    if status:
        with open(log) as f:
            sys.exit(f"{name}: exit {status}\n{f.read()[-3000:]}")
    made = os.path.join(out, "predictions") if name == "pipeline" else out
    rows = ds.dataset(made, partitioning="hive" if name == "pipeline" else None).count_rows()
    if rows != n:
        sys.exit(f"{name}: {rows} rows in {out}, expected {n}")
    return {"wall_s": wall, "cpu_s": children_cpu() - cpu_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--python", default="python", help="the peers' interpreter (Ray, Daft)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "peers-bench"))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    photos = made_once(
        os.path.join(args.work, f"photos_{args.n}"), lambda p: make_photos(args.n, p)
    )
    model = made_once(os.path.join(args.work, "near_zero"), build_trivial)
    out = os.path.join(args.work, "out")
    log = os.path.join(args.work, "stderr.log")
    cmds = {
        "pipeline": [sys.executable, "-m", "pipeline.run", f"--input={photos}/*.jpg"]
        + [f"--output={out}", f"--model={model}", "--date=2026-01-01", "--quiet"],
        "simple_script": [sys.executable, "-m", "benchmarks.simple_script", photos, model, out],
        "ray_data": [args.python, "-m", "benchmarks.peers.ray_data_job", photos, model, out],
        "daft": [args.python, "-m", "benchmarks.peers.daft_job", photos, model, out],
    }
    # Processes a run leaves behind (Ray's workers) become ours, so that their CPU is counted.
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    runs: dict[str, list[dict]] = {name: [] for name in TOOLS}
    for _ in range(args.rounds):
        for name in TOOLS:
            runs[name].append(one_run(name, cmds[name], out, args.n, log))
    result: dict = {
        "machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "n": args.n,
        "rounds": args.rounds,
    }
    for name, got in runs.items():
        result[name] = {key: round(statistics.median(r[key] for r in got), 2) for key in got[0]}
    for name in TOOLS[1:]:
        ratio = result[name]["wall_s"] / result["pipeline"]["wall_s"]
        result[f"{name}_wall_over_pipeline"] = round(ratio, 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
