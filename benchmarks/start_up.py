"""A run with little to do, measured (not a test): the whole process of `python -m
pipeline.run` labelling the six bundled samples with the near-zero model, this checkout
against another commit's code (a git worktree), runs alternated so both meet the same load.

python -m benchmarks.start_up [--before REV] [--runs 5] [--work DIR] [--before_packages DIR]

Prints one JSON object: for each tree, the median wall time and CPU seconds (user + system)
of the whole process and the time to its first row (processed_at), and the ratios
after/before. Figures go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow.dataset as ds

from benchmarks.run import ENV
from benchmarks.workload import build_trivial

KEYS = ("wall_s", "cpu_s", "first_row_s")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_run(tree: str, samples: str, model: str, out: str, packages: str = "") -> dict:
    """The command as a user runs it, from `tree`'s code (and `packages` first on its path):
    wall and CPU of the whole process, and when its first row was made."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.run", f"--input={samples}/*.jpg"]
    cmd += [f"--output={out}", f"--model={model}", "--date=2026-01-01", "--quiet"]
    env = dict(ENV, PYTHONPATH=packages) if packages else ENV
    started = time.time()
    proc = subprocess.Popen(
        cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - started
    err = proc.stderr.read().decode(errors="replace")
    if status:
        sys.exit(f"{tree}: exit {status}\n{err[-2000:]}")
    made = ds.dataset(os.path.join(out, "predictions"), partitioning="hive").to_table()
    first = made.column("processed_at").cast("int64").to_numpy().min() / 1e6
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "first_row_s": first - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="HEAD~1", help="the commit to compare against")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--before_packages",
        default="",
        help="a folder the before runs import first (PYTHONPATH), to time pinned versions "
        "before a change of requirements.txt: pip install --no-deps --target DIR PKG==V",
    )
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "start-up-bench"))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    model = os.path.join(args.work, "near_zero")
    if not os.path.isdir(model):
        build_trivial(model)
    before = os.path.join(args.work, "before")
    subprocess.run(["git", "worktree", "remove", "--force", before], cwd=REPO, capture_output=True)
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--force", before, args.before],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    trees = {"before": before, "after": REPO}
    packages = {"before": args.before_packages, "after": ""}
    samples = os.path.join(REPO, "samples")
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    try:
        out = os.path.join(args.work, "out")
        for name, tree in trees.items():  # a first run of each, not counted: caches warm
            one_run(tree, samples, model, out, packages[name])
        for _ in range(args.runs):
            for name, tree in trees.items():
                runs[name].append(one_run(tree, samples, model, out, packages[name]))
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", before], cwd=REPO, capture_output=True
        )
    result: dict = {
        "machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "before_commit": args.before,
        "before_packages": sorted(os.listdir(args.before_packages)) if args.before_packages else [],
        "runs": args.runs,
    }
    for name, got in runs.items():
        result[name] = {key: round(statistics.median(r[key] for r in got), 2) for key in KEYS}
    for key in KEYS:
        result[f"{key}_after_over_before"] = round(result["after"][key] / result["before"][key], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
