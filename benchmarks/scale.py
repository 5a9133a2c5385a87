"""The scale benchmark (not a test): a scheduled run's life at a million URIs on DirectRunner,
with the near-zero model and small JPEGs (1,000 distinct files hard-linked under every name).

  day 1 at --small and at --n URIs (wall time, steady rate, peak RSS, their ratios);
  day 2 at --n: 10,000 new and 1,000 changed URIs, --plan first, then the run (exactly 11,000
  labelled; its wall time against day 1's); the same again (nothing labelled);
  with --flink: day 1 at --small on the local Flink cluster (scripts/flink_cluster.sh).

python -m benchmarks.scale [--n 1000000] [--small 100000] [--work DIR] [--flink]
python -m benchmarks.scale --portions [--n 1000000] [--big 3000000] ...: runs in portions
  (benchmarks/portions.py, whose flags follow --portions).
Prints one JSON object; figures go to docs/performance.md with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow.dataset as ds
from PIL import Image

from benchmarks.run import run_child
from benchmarks.workload import build_trivial

DISTINCT = 1000  # distinct JPEGs; every other name is a hard link to one of them
PER_FOLDER = 1000
NEW, CHANGED = 10_000, 1_000
SIZE, BATCH = 32, 128
LABELLED = re.compile(r"labelled ([\d,]+) of ([\d,]+) images")


def jpeg(seed: int, path: str) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def make_tree(root: str, n: int, seeds: str, start: int = 0) -> None:
    """n names root/dNNNN/pNNNNNNN.jpg, numbered from `start`, hard links to the seeds."""
    for i in range(start, start + n):
        folder = os.path.join(root, f"d{i // PER_FOLDER:04d}")
        if i % PER_FOLDER == 0 or i == start:
            os.makedirs(folder, exist_ok=True)
        os.link(os.path.join(seeds, f"s{i % DISTINCT:04d}.jpg"), f"{folder}/p{i:07d}.jpg")


def change(root: str, count: int, seed_base: int) -> None:
    """New content under `count` existing names (a new file, not a write through the link)."""
    for i in range(count):
        path = os.path.join(root, f"d{i // PER_FOLDER:04d}", f"p{i:07d}.jpg")
        os.unlink(path)
        jpeg(seed_base + i, path)


def label(photos: str, out: str, model: str, date: str, *extra: str) -> dict:
    """The CLI on photos/**.jpg: wall time, peak RSS, the summary's count, the steady rate
    from the processed_at stamps of this date's rows (10th to 90th percentile)."""
    cmd = [
        sys.executable,
        "-m",
        "pipeline.run",
        f"--input={photos}/**.jpg",
        f"--output={out}",
        f"--model={model}",
        f"--image_size={SIZE}",
        f"--batch_size={BATCH}",
        f"--date={date}",
        "--quiet",
        *extra,
    ]
    part = os.path.join(out, "predictions", f"date={date}")
    before = set(os.listdir(part)) if os.path.isdir(part) else set()
    wall, peak_mib, stdout = run_child(cmd)
    result = {"wall_s": round(wall, 1), "peak_rss_mib": peak_mib}
    if "--plan" in extra:
        result["plan"] = stdout.strip().splitlines()
        return result
    written = sorted(set(os.listdir(part)) - before) if os.path.isdir(part) else []
    if not written:
        return {**result, "labelled": 0}
    files = [os.path.join(part, name) for name in written]  # this run's files only
    stamps = np.sort(
        ds.dataset(files).to_table(columns=["processed_at"]).column(0).cast("int64").to_numpy()
    )
    result["labelled"] = len(stamps)
    if len(stamps) > 100:
        lo, hi = np.percentile(stamps, [10, 90]) / 1e6
        result["steady_rate"] = round(0.8 * len(stamps) / (hi - lo), 1)
    return result


def flink_day1(photos: str, out: str, model: str, work: str) -> dict:
    """Day 1 at --small on the local Flink cluster: 2 TaskManagers, parallelism 2."""
    cluster = os.path.join(work, "flink")
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "flink_cluster.sh")
    started = subprocess.run(
        ["bash", script, "start", "--dir", cluster, "--taskmanagers", "2", "--slots", "1"],
        capture_output=True,
        text=True,
    )
    if started.returncode:
        return {"error": started.stderr.strip()[-500:]}
    try:
        line = started.stdout.strip().splitlines()[-1]
        master = re.search(r"--flink_master (\S+)", line)[1]
        worker = re.search(r"--worker_command (\S+)", line)[1]
        flags = [f"--flink_master={master}", f"--worker_command={worker}"]
        run = os.path.join(os.path.dirname(__file__), "..", "run_flink.sh")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                "bash",
                run,
                f"--input={photos}/**.jpg",
                f"--output={out}",
                f"--model={model}",
                f"--image_size={SIZE}",
                f"--batch_size={BATCH}",
                "--parallelism=2",
                "--date=2026-01-01",
                "--quiet",
                *flags,
            ],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        found = LABELLED.search(proc.stderr)
        return {
            "wall_s": round(wall, 1),
            "exit": proc.returncode,
            "labelled": int(found[1].replace(",", "")) if found else None,
            "tail": proc.stderr.strip().splitlines()[-1:],
        }
    finally:
        subprocess.run(["bash", script, "stop", "--dir", cluster], capture_output=True)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--portions" in argv:
        from benchmarks import portions

        portions.main([a for a in argv if a != "--portions"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--work", default="/tmp/beam-image-labeler-scale")
    parser.add_argument("--flink", action="store_true")
    parser.add_argument("--flink_only", action="store_true", help="only day 1 at --small on Flink")
    args = parser.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    seeds = os.path.join(args.work, "seeds")
    os.makedirs(seeds)
    for i in range(DISTINCT):
        jpeg(i, os.path.join(seeds, f"s{i:04d}.jpg"))
    model = build_trivial(os.path.join(args.work, "near_zero"))
    report: dict = {"machine": f"{platform.node()}, {os.cpu_count()} cores", "date": time.ctime()}

    small, big = os.path.join(args.work, "small"), os.path.join(args.work, "big")
    if args.flink_only:
        make_tree(small, args.small, seeds)
        flink_out = os.path.join(args.work, "out_flink")
        report["flink_day1_small"] = flink_day1(small, flink_out, model, args.work)
        report["direct_day1_small"] = label(
            small, os.path.join(args.work, "o"), model, "2026-01-01"
        )
        print(json.dumps(report, indent=1))
        return
    t0 = time.perf_counter()
    make_tree(small, args.small, seeds)
    make_tree(big, args.n, seeds)
    report["make_trees_s"] = round(time.perf_counter() - t0, 1)

    report["day1_small"] = label(small, os.path.join(args.work, "out_small"), model, "2026-01-01")
    out = os.path.join(args.work, "out")
    report["day1"] = label(big, out, model, "2026-01-01")
    for key in ("steady_rate", "peak_rss_mib"):
        report[f"ratio_{key}"] = round(report["day1"][key] / report["day1_small"][key], 3)

    make_tree(big, NEW, seeds, start=args.n)
    change(big, CHANGED, seed_base=DISTINCT)
    report["day2_plan"] = label(big, out, model, "2026-01-02", "--plan", "--plan_sample=200")
    report["day2"] = label(big, out, model, "2026-01-02")
    report["ratio_day2_wall"] = round(report["day2"]["wall_s"] / report["day1"]["wall_s"], 3)
    report["day2_again"] = label(big, out, model, "2026-01-02")
    if args.flink:
        flink_out = os.path.join(args.work, "out_flink")
        report["flink_day1_small"] = flink_day1(small, flink_out, model, args.work)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
