"""A run with little to do, measured (not a test): the whole process of `python -m
pipeline.run` labelling the six bundled samples with the near-zero model, this checkout
against another commit's code (a git worktree), runs alternated so both meet the same load.

python -m benchmarks.start_up [--before REV] [--runs 5] [--work DIR]

Prints one JSON object: for each tree, the median wall time and CPU seconds (user + system)
of the whole process, and the ratios after/before. Figures go to docs/performance.md.
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

from benchmarks.run import ENV
from benchmarks.workload import build_trivial

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_run(tree: str, samples: str, model: str, out: str) -> dict:
    """The command as a user runs it, from `tree`'s code: wall and CPU of the whole process."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.run", f"--input={samples}/*.jpg"]
    cmd += [f"--output={out}", f"--model={model}", "--date=2026-01-01", "--quiet"]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=tree, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    err = proc.stderr.read().decode(errors="replace")
    if status:
        sys.exit(f"{tree}: exit {status}\n{err[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="HEAD~1", help="the commit to compare against")
    parser.add_argument("--runs", type=int, default=5)
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
    samples = os.path.join(REPO, "samples")
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    try:
        for tree in trees.values():  # a first run of each, not counted: caches warm
            one_run(tree, samples, model, os.path.join(args.work, "out"))
        for _ in range(args.runs):
            for name, tree in trees.items():
                runs[name].append(one_run(tree, samples, model, os.path.join(args.work, "out")))
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", before], cwd=REPO, capture_output=True
        )
    result: dict = {
        "machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "before_commit": args.before,
        "runs": args.runs,
    }
    for name, got in runs.items():
        result[name] = {
            key: round(statistics.median(r[key] for r in got), 2) for key in ("wall_s", "cpu_s")
        }
    for key in ("wall_s", "cpu_s"):
        result[f"{key}_after_over_before"] = round(result["after"][key] / result["before"][key], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
