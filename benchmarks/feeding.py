"""How close the pipeline feeds to the decoder's limit (not a test): the CLI's steady rate
with the near-zero model against decode+resize alone on every core at once, the same photos.

    .venv/bin/python -m benchmarks.feeding [--small 3000] [--large 600] [--rounds 3] [--gcs]

The decoder alone: one process per usable core, each with its share of the photos already in
memory, started together; its rate is all the photos over the time the last one took. The
pipeline: `python -m pipeline.run` at its defaults on the same folder (benchmarks.run's
pipeline_run: rate and whole-process CPU between the rows at 20% and 90% of the run, by their
processed_at). Rounds alternate the two so both meet the same load; medians. With --gcs, also
the small photos from gs:// (a loopback emulator behind a proxy adding 50 ms to each request,
benchmarks.run's slow_bucket) against the same from local disk, the pipeline on the cores the
servers leave free, alternated. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time

from benchmarks.run import LARGE, on_cores, pipeline_run, slow_bucket, split_cores
from benchmarks.workload import build_trivial, made_once, make_photos
from transforms.feed import usable_cores
from transforms.images import decode_and_resize

# The rows the steady rate is measured over (shares of the run's rows): past the run's first
# portion (64 images) and its start, short of its last batches.
STEADY = (0.2, 0.9)


def decode_share(paths: list[str], size: int, start, done) -> None:
    data = []
    for path in paths:
        with open(path, "rb") as f:
            data.append(f.read())
    start.wait()
    for d in data:
        decode_and_resize(d, size)
    done.put(time.perf_counter())


def all_core_decoder(paths: list[str], size: int = 300) -> float:
    """Images/s of decode+resize with one process per usable core, all started at once."""
    cores = usable_cores()
    ctx = multiprocessing.get_context("fork")
    start, done = ctx.Barrier(cores + 1), ctx.Queue()
    procs = [
        ctx.Process(target=decode_share, args=(paths[i::cores], size, start, done))
        for i in range(cores)
    ]
    for p in procs:
        p.start()
    start.wait()
    began = time.perf_counter()
    ended = max(done.get() for _ in procs)
    for p in procs:
        p.join()
    return len(paths) / (ended - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=3000, help="500x375 photos (0: none)")
    parser.add_argument("--large", type=int, default=600, help="3000x2250 photos (0: none)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gcs", action="store_true", help="gs:// at 50 ms against local disk")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "feeding-bench"))
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    model = build_trivial(os.path.join(args.workdir, "near_zero"))
    sets = {}
    if args.small:
        sets["500x375"] = made_once(
            os.path.join(args.workdir, f"small_{args.small}"),
            lambda d: make_photos(args.small, d),
        )
    if args.large:
        sets["3000x2250"] = made_once(
            os.path.join(args.workdir, f"large_{args.large}"),
            lambda d: make_photos(args.large, d, size=LARGE, seed=5),
        )
    decoder: dict = {name: [] for name in sets}  # images/s, a round each
    runs: dict = {name: [] for name in sets}  # pipeline_run's results, a round each
    photos = {
        name: sorted(os.path.join(folder, f) for f in os.listdir(folder))
        for name, folder in sets.items()
    }
    for _ in range(args.rounds):
        for name, folder in sets.items():
            decoder[name].append(all_core_decoder(photos[name]))
            runs[name].append(steady_run(folder, model, args.workdir))
    gcs = (
        gcs_against_local(sets["500x375"], model, args.workdir, args.rounds)
        if (args.gcs and args.small)
        else None
    )
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    report: dict = {
        "machine": f"{platform.node()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": rev.stdout.strip(),
    }
    for name in sets:
        rates = [r["steady_rate"] for r in runs[name]]
        ratios = [p / d for p, d in zip(rates, decoder[name], strict=True)]
        report[name] = {
            "decoder_all_cores": round(statistics.median(decoder[name]), 1),
            "pipeline_steady": round(statistics.median(rates), 1),
            "pipeline_cores_used": median(runs[name], "steady_cores_used"),
            "pipeline_cpu_ms_per_image": median(runs[name], "steady_cpu_per_image_ms"),
            "decoder_core_ms_per_image": round(
                1e3 * usable_cores() / statistics.median(decoder[name]), 2
            ),
            "ratios": [round(x, 3) for x in ratios],
            "ratio_median": round(statistics.median(ratios), 3),
        }
    if gcs:
        cores, local, remote = gcs
        ratios = [
            g["steady_rate"] / loc["steady_rate"] for g, loc in zip(remote, local, strict=True)
        ]
        report["gcs_50ms_vs_local"] = {
            "cores": cores,
            "local": median(local, "steady_rate", 1),
            "gs://": median(remote, "steady_rate", 1),
            "cores_used_local": median(local, "steady_cores_used"),
            "cores_used_gs://": median(remote, "steady_cores_used"),
            "ratios": [round(x, 3) for x in ratios],
            "ratio_median": round(statistics.median(ratios), 3),
        }
    print(json.dumps(report, indent=1))


def median(runs: list[dict], key: str, digits: int = 2) -> float:
    return round(statistics.median(r[key] for r in runs), digits)


def steady_run(source: str, model: str, workdir: str, env=None, cores=None) -> dict:
    """The CLI on `source` into a fresh output (else it skips what an earlier round labelled),
    measured between the STEADY rows."""
    out = os.path.join(workdir, "out")
    shutil.rmtree(out, ignore_errors=True)
    return pipeline_run(source, model, out, 32, env, cores, STEADY)


def gcs_against_local(folder: str, model: str, workdir: str, rounds: int):
    """(cores used for the pipeline, its runs from local disk, its runs from a slow bucket),
    alternated, the pipeline on the cores the storage servers leave free."""
    pipeline_cores, server_cores = split_cores()
    local, remote = [], []
    with on_cores(server_cores), slow_bucket(folder, workdir) as (prefix, env):
        for _ in range(rounds):
            local.append(steady_run(folder, model, workdir, None, pipeline_cores))
            remote.append(steady_run(prefix, model, workdir, env, pipeline_cores))
    return len(pipeline_cores), local, remote


if __name__ == "__main__":
    main()
