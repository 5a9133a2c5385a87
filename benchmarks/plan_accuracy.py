"""--plan's projection against the run that follows, measured (not a test): on --photos
photo-like JPEGs, with the near-zero model and with the B3-sized one, the projected time
(pipeline/plan.py, computed as --plan computes it) and the run's own time (its summary's
seconds: listing to commit, start-up excluded, as the projection), one after the other on
the same machine; with --plan's own time (its whole process) and the parts it timed.

python -m benchmarks.plan_accuracy [--photos 1000] [--work DIR] [--models near_zero,b3_sized]

Prints one JSON object; the figures go to docs/performance.md.
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

from benchmarks.run import ENV
from benchmarks.workload import build_b3, build_trivial, made_once, make_photos
from pipeline.numbers import seconds_of

DATE = "2026-01-01"
SUMMARY_SECONDS = re.compile(r"labelled [\d,]+ of [\d,]+ images.* in ([\d,hms.]+) \(")


# Plan's timed parts, reported beside the projection (seconds; per image where so named).
PARTS = ("listing_s", "load_s", "decode_wall_s", "model_s", "graph_s", "job_s", "start_s", "jobs")


def projected(args: list[str]) -> dict:
    """What --plan projects for these arguments, in a child process (as --plan runs), its
    parts, and the seconds that process took, start-up included (--plan's own time)."""
    code = (
        "import json, sys\n"
        "from pipeline.config import prepare\n"
        "from pipeline.options import LabelerOptions, parse_options\n"
        "from pipeline.plan import estimate\n"
        "options = parse_options(sys.argv[1:], 'plan')\n"
        "plan = estimate(prepare(options.view_as(LabelerOptions)))\n"
        "print(json.dumps({**vars(plan), 'counts': None, 'projected_s': plan.projected_s()}))\n"
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "--plan"], env=ENV, capture_output=True, text=True
    )
    took = time.monotonic() - started
    if proc.returncode:
        sys.exit(f"--plan failed:\n{proc.stderr[-2000:]}")
    plan = json.loads(proc.stdout.strip().splitlines()[-1])
    parts = {name: round(plan[name], 4) for name in PARTS}
    return {"projected_s": plan["projected_s"], "plan_process_s": round(took, 1), "parts": parts}


def run_seconds(args: list[str]) -> float:
    """The run's own seconds, from its summary line."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.run", *args, "--quiet"],
        env=ENV,
        capture_output=True,
        text=True,
    )
    found = SUMMARY_SECONDS.search(proc.stderr)
    if proc.returncode or not found:
        sys.exit(f"the run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds_of(found[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--work", default="/tmp/beam-image-labeler-plan")
    parser.add_argument("--models", default="near_zero,b3_sized", help="which of the two")
    args = parser.parse_args()
    photos = made_once(
        os.path.join(args.work, f"photos{args.photos}"), lambda p: make_photos(args.photos, p)
    )
    builders = {"near_zero": build_trivial, "b3_sized": build_b3}
    folders = {"near_zero": "near_zero", "b3_sized": "b3"}
    models = {
        name: builders[name](os.path.join(args.work, folders[name]))
        for name in args.models.split(",")
    }
    result: dict = {
        "machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "photos": args.photos,
    }
    for name, model in models.items():
        out = os.path.join(args.work, "out", name)
        shutil.rmtree(out, ignore_errors=True)
        common = [f"--input={photos}/*.jpg", f"--output={out}", f"--model={model}"]
        common.append(f"--date={DATE}")
        plan = projected(common)
        ran = run_seconds(common)
        result[name] = {
            "projected_s": round(plan["projected_s"], 1),
            "run_s": round(ran, 1),
            "projected_over_run": round(plan["projected_s"] / ran, 3),
            "plan_process_s": plan["plan_process_s"],
            "plan_parts": plan["parts"],
        }
        print(json.dumps({name: result[name]}), file=sys.stderr)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
