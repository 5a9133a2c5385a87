"""One command, one machine: the bare model's limit, decode cost, a plain script's time, and
the real pipeline (python -m pipeline.run on DirectRunner) end to end, with peak memory at N
and 10 x N, and its feeding rate with a near-zero-cost model on --n_feeding photos: from
local disk, on large photos, and from gs:// (a loopback GCS emulator behind a proxy adding
50 ms to each request; the servers on the last core, gs:// and local disk both fed on the
others), beside the decode-only rate of the fastest label-keeping decoder on one core.

With --models b3,lite0 (the default) the same N photos are also labelled by the built-in
EfficientNet-Lite0 (real ImageNet weights, 224x224), bare and in the pipeline, in the same run.

    .venv/bin/python -m benchmarks.run [--n 300] [--n_feeding 3000] [--n_large 300]
        [--batch_size 32] [--no_memory] [--models b3,lite0]

Prints a table and the ratios pipeline/bare; writes them to benchmarks/results/latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.dataset as ds

from benchmarks.decoders import LARGE
from benchmarks.workload import build_b3, build_trivial, make_photos
from transforms.images import decode_and_resize
from transforms.models.catalog import LITE0, NATIVE_SIZES, locate

ADOPTED = "simplejpeg >=2x + pillow resize (adopted)"  # the one transforms/images.py runs
RESULTS = os.path.join(os.path.dirname(__file__), "results")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


CpuSamples = list[tuple[float, float]]  # (time.time(), CPU seconds the child has used)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process and all its threads (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_between(samples: CpuSamples, start: float, end: float) -> float:
    """CPU seconds used between two moments, from the samples nearest to them."""
    first = min(samples, key=lambda s: abs(s[0] - start))
    last = min(samples, key=lambda s: abs(s[0] - end))
    return last[1] - first[1]


def run_child(
    cmd: list[str], env: dict | None = None, cpu: CpuSamples | None = None
) -> tuple[float, int, str]:
    """Runs cmd; returns (wall seconds, peak RSS in MiB of that process, its stdout). With
    `cpu`, appends to it the child's CPU seconds every 50 ms while it runs."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out_file:
        # Files, so a chatty child never blocks on a full pipe while it is sampled.
        proc = subprocess.Popen(cmd, env=env or ENV, stdout=out_file, stderr=err)
        while True:
            pid, status, usage = os.wait4(proc.pid, 0 if cpu is None else os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here
                break
            used = cpu_seconds(proc.pid)
            if used is not None:
                cpu.append((time.time(), used))
            time.sleep(0.05)
        out_file.seek(0)
        out = out_file.read()
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status):
            err.seek(0)
            sys.exit(f"{' '.join(cmd)} failed:\n{err.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss // 1024, out.decode()


def decode_rate(paths: list[str], size: int = 300) -> float:
    data = [open(p, "rb").read() for p in paths]
    t0 = time.perf_counter()
    for d in data:
        decode_and_resize(d, size)
    return len(data) / (time.perf_counter() - t0)


def decode_cpu_per_image(paths: list[str], size: int = 300, rounds: int = 3) -> float:
    """CPU seconds per decode+resize on this thread (best of rounds): the codec's cost,
    whatever else the machine runs."""
    data = [open(p, "rb").read() for p in paths]
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time()
        for d in data:
            decode_and_resize(d, size)
        best = min(best, (time.thread_time() - t0) / len(data))
    return best


def pipeline_run(
    photos: str,
    model: str,
    out: str,
    batch_size: int,
    env: dict | None = None,
    cores: set[int] | None = None,
    window: tuple[float, float] | None = None,
) -> dict:
    """The CLI on photos (a folder or gs:// prefix) into `out`, on `cores` if given: wall
    time, rates, peak RSS, and the CPU seconds per image of the whole process in the steady
    state: from the first batch's row to the last, or, with `window` (shares of the rows,
    say 0.2 to 0.9), between those rows, away from the run's first portion and its end."""
    pin = ["taskset", "-c", ",".join(map(str, sorted(cores)))] if cores else []
    cmd = [
        *pin,
        sys.executable,
        "-m",
        "pipeline.run",
        f"--input={photos}/*.jpg",
        f"--output={out}",
        f"--model={model}",
        f"--batch_size={batch_size}",
        "--runner=DirectRunner",
    ]
    started = time.time()
    cpu: CpuSamples = []
    wall, peak_mib, _ = run_child(cmd, env, cpu)
    table = ds.dataset(os.path.join(out, "predictions"), partitioning="hive").to_table()
    stamps = np.sort(table.column("processed_at").cast("int64").to_numpy()) / 1e6
    if window:
        first, last = (round(share * (len(stamps) - 1)) for share in window)
    else:
        first, last = min(batch_size, len(stamps)) - 1, len(stamps) - 1
    steady = (last - first) / (stamps[last] - stamps[first])
    steady_cpu = cpu_between(cpu, stamps[first], stamps[last]) if cpu else float("nan")
    return {
        "steady_cpu_per_image_ms": 1e3 * steady_cpu / (last - first),
        "steady_cores_used": steady_cpu / (stamps[last] - stamps[first]),
        "images": len(stamps),
        "wall_s": wall,
        "end_to_end_rate": len(stamps) / wall,
        "steady_rate": steady,
        "first_prediction_s": stamps[0] - started,
        "peak_rss_mib": peak_mib,
    }


def decoder_rates(work: str) -> dict:
    """benchmarks.decoders pinned to one core: images/s per candidate, 500x375 and large."""
    cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), sys.executable, "-m"]
    _, _, out = run_child([*cmd, "benchmarks.decoders", f"--workdir={work}"])
    return json.loads(out.strip().splitlines()[-1])["rates"]


def split_cores() -> tuple[set[int], set[int]]:
    """(cores for the pipeline, cores for the loopback storage servers): the last core serves
    (the emulator and proxy stand in for Cloud Storage, whose CPU is not the worker's); on
    a one-core machine both share it."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) == 1:
        return set(cores), set(cores)
    return set(cores[:-1]), {cores[-1]}


@contextlib.contextmanager
def on_cores(cores: set[int]):
    """This process (and the children it starts meanwhile) on `cores` only."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


@contextlib.contextmanager
def slow_bucket(photos: str, work: str, delay: float = 0.05):
    """The photos in a bucket of a loopback GCS emulator, reached through a proxy adding
    `delay` to each request (served from this process's threads). Yields (gs:// prefix,
    environment for the pipeline child)."""
    from google.cloud import storage

    from tests.gcs_proxy import LatencyProxy
    from tests.gcs_servers import Emulator, MetadataServer, free_port, metadata_env

    metadata = MetadataServer(free_port()).start()
    emulator = Emulator(tempfile.mkdtemp(dir=work), threaded=True, in_memory=True).start()
    proxy = LatencyProxy(emulator.port, delay).start()
    env = dict(ENV, **metadata_env(metadata.port), STORAGE_EMULATOR_HOST=proxy.endpoint)
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    try:
        saved = dict(os.environ)
        os.environ.update(metadata_env(metadata.port), STORAGE_EMULATOR_HOST=emulator.endpoint)
        try:
            bucket = storage.Client(project="bench").create_bucket("bench")
            for name in sorted(os.listdir(photos)):
                bucket.blob(f"photos/{name}").upload_from_filename(os.path.join(photos, name))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        yield "gs://bench/photos", env
    finally:
        proxy.stop()
        emulator.stop()
        metadata.stop()


def lite0_runs(photos: str, work: str, stamp: int, batch: int) -> dict:
    """The built-in efficientnet-lite0 (real weights, 224x224): bare on pre-decoded batches
    and the pipeline on the same photos, as for B3."""

    size = NATIVE_SIZES[LITE0]
    bare_cmd = [sys.executable, "-m", "benchmarks.bare_model", locate(LITE0)]
    _, _, out = run_child([*bare_cmd, str(batch), "20", str(size)])
    bare = json.loads(out.strip().splitlines()[0])
    run = pipeline_run(photos, LITE0, os.path.join(work, f"out_lite0_{stamp}"), batch)
    return {
        "image_size": size,
        "bare_rate": bare["rate"],
        "bare_load_s": bare["load_s"],
        "pipeline": run,
        "ratio_steady": run["steady_rate"] / bare["rate"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="photos in the main run")
    parser.add_argument(
        "--n_feeding",
        type=int,
        default=3000,
        help="photos fed to the near-zero model (local and gs://): seconds of steady state",
    )
    parser.add_argument("--n_large", type=int, default=300, help="3000x2250 photos (feeding)")
    parser.add_argument("--batch_size", type=int, default=32, help="inference batch size")
    parser.add_argument(
        "--no_memory", action="store_true", help="skip the 10 x N run (peak memory)"
    )
    parser.add_argument("--workdir", default="/tmp/image-labeler-bench", help="scratch folder")
    parser.add_argument(
        "--models",
        default="b3,lite0",
        help="real models to measure, comma-separated: b3 (B3 architecture, random weights; "
        "needed for the end-to-end and memory rows) and lite0 (built-in efficientnet-lite0)",
    )
    args = parser.parse_args(argv)
    models = set(args.models.split(","))
    if not models <= {"b3", "lite0"} or "b3" not in models:
        parser.error("--models takes b3 or b3,lite0")

    work, n, batch = args.workdir, args.n, args.batch_size
    model = build_b3(os.path.join(work, "b3-hub-layout"))
    trivial = build_trivial(os.path.join(work, "near_zero_1px"))
    sizes = [n] + ([] if args.no_memory else [10 * n])
    folders = {}
    for size in {*sizes, args.n_feeding}:
        folders[size] = os.path.join(work, f"photos_{size}")
        if len(os.listdir(folders[size]) if os.path.isdir(folders[size]) else []) != size:
            make_photos(size, folders[size])
    folders["large"] = os.path.join(work, f"photos_large_{args.n_large}")
    if not os.path.isdir(folders["large"]) or len(os.listdir(folders["large"])) != args.n_large:
        make_photos(args.n_large, folders["large"], size=LARGE, seed=5)
    stamp = int(time.time())

    _, _, bare_out = run_child(
        [sys.executable, "-m", "benchmarks.bare_model", model, str(batch), "16"]
    )
    bare = json.loads(bare_out.strip().splitlines()[0])
    photos = sorted(os.path.join(folders[n], f) for f in os.listdir(folders[n]))
    decode = decode_rate(photos[:200])
    decode_cpu_ms = 1e3 * decode_cpu_per_image(photos[:200])
    simple_out = os.path.join(work, f"simple_{n}_{stamp}.parquet")
    simple_wall, _, _ = run_child(
        [
            sys.executable,
            "-m",
            "benchmarks.simple_script",
            folders[n],
            model,
            simple_out,
            str(batch),
        ]
    )
    runs = {
        size: pipeline_run(folders[size], model, os.path.join(work, f"out_{size}_{stamp}"), batch)
        for size in sizes
    }
    nf = args.n_feeding
    feeding = pipeline_run(folders[nf], trivial, os.path.join(work, f"trivial_{stamp}"), batch)
    feeding_large = pipeline_run(
        folders["large"], trivial, os.path.join(work, f"trivial_large_{stamp}"), batch
    )
    # gs:// against local disk, both on the cores the storage servers leave free.
    pipeline_cores, server_cores = split_cores()
    feeding_local_pinned = pipeline_run(
        folders[nf],
        trivial,
        os.path.join(work, f"trivial_pinned_{stamp}"),
        batch,
        cores=pipeline_cores,
    )
    with on_cores(server_cores), slow_bucket(folders[nf], work) as (prefix, env):
        feeding_gcs = pipeline_run(
            prefix,
            trivial,
            os.path.join(work, f"trivial_gcs_{stamp}"),
            batch,
            env,
            cores=pipeline_cores,
        )
    lite0 = lite0_runs(folders[n], work, stamp, batch) if "lite0" in models else None
    decoders = decoder_rates(work)
    fastest = {size: max(rates.values()) for size, rates in decoders.items()}
    kept = {size: rates[ADOPTED] for size, rates in decoders.items()}

    main_run = runs[n]
    limit_wall = n / bare["rate"]
    cores = len(os.sched_getaffinity(0))
    report = {
        "machine": f"{platform.node()} {cores} cores {platform.processor()}".strip(),
        "n": n,
        "n_feeding": nf,
        "batch_size": batch,
        "bare_rate": bare["rate"],
        "bare_load_s": bare["load_s"],
        "bare_first_batch_s": bare["first_batch_s"],
        "decode_rate_per_core": decode,
        "simple_script_wall_s": simple_wall,
        "pipeline": {str(size): r for size, r in runs.items()},
        "feeding_rate": feeding["steady_rate"],
        "feeding_rate_per_core": feeding["steady_rate"] / cores,
        "feeding_cores_vs_gcs": len(pipeline_cores),
        "feeding_rate_local_on_those_cores": feeding_local_pinned["steady_rate"],
        "feeding_rate_gcs_50ms": feeding_gcs["steady_rate"],
        "feeding_cpu_per_image_ms_local_vs_gcs": [
            feeding_local_pinned["steady_cpu_per_image_ms"],
            feeding_gcs["steady_cpu_per_image_ms"],
        ],
        "feeding_rate_large_per_core": feeding_large["steady_rate"] / cores,
        "feeding_cpu_per_image_ms": feeding["steady_cpu_per_image_ms"],
        "feeding_cores_used": feeding["steady_cores_used"],
        "decode_cpu_per_image_ms": decode_cpu_ms,
        "ratio_decode_cpu_vs_feeding_cpu": decode_cpu_ms / feeding["steady_cpu_per_image_ms"],
        "decoders_one_core": decoders,
        "decode_rate_adopted_per_core": kept,
        "ratio_gcs_vs_local_feeding": (
            feeding_gcs["steady_rate"] / feeding_local_pinned["steady_rate"]
        ),
        "ratio_feeding_vs_decode_500x375": feeding["steady_rate"] / cores / kept["500x375"],
        "ratio_feeding_vs_decode_large": feeding_large["steady_rate"] / cores / kept["3000x2250"],
        "ratio_steady": main_run["steady_rate"] / bare["rate"],
        "ratio_end_to_end": limit_wall / main_run["wall_s"],
        "ratio_vs_simple_script": simple_wall / main_run["wall_s"],
    }
    if not args.no_memory:
        report["memory_ratio_10x"] = runs[10 * n]["peak_rss_mib"] / main_run["peak_rss_mib"]
        report["ratio_steady_10x"] = runs[10 * n]["steady_rate"] / bare["rate"]
    if lite0 is not None:
        report["lite0"] = lite0
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump(report, f, indent=2)

    print(f"machine: {report['machine']}; N={n}, batch {batch}")
    print(f"{'measure':<58}{'value':>10}")
    rows = [
        ("bare model, steady (images/s)", bare["rate"]),
        ("bare model, TF import + load (s)", bare["load_s"]),
        ("bare model, first batch (s)", bare["first_batch_s"]),
        ("decode+resize 500x375 JPEG, one core (images/s)", decode),
        (f"simple script N={n}: whole process (s)", simple_wall),
    ]
    for size, r in runs.items():
        rows += [
            (f"pipeline N={size}: whole process (s)", r["wall_s"]),
            (f"pipeline N={size}: end to end (images/s)", r["end_to_end_rate"]),
            (f"pipeline N={size}: steady state (images/s)", r["steady_rate"]),
            (f"pipeline N={size}: first prediction after (s)", r["first_prediction_s"]),
            (f"pipeline N={size}: peak RSS (MiB)", r["peak_rss_mib"]),
        ]
    rows += [
        (f"feeding N={nf}: near-zero model, steady (images/s)", feeding["steady_rate"]),
        ("feeding per core (images/s)", report["feeding_rate_per_core"]),
        (
            f"feeding on {len(pipeline_cores)} core(s) from local disk (images/s)",
            feeding_local_pinned["steady_rate"],
        ),
        ("feeding on the same from gs://, 50 ms per request", feeding_gcs["steady_rate"]),
        ("feeding 3000x2250 photos per core (images/s)", report["feeding_rate_large_per_core"]),
        ("decode+resize 500x375, adopted decoder, one core", kept["500x375"]),
        ("decode+resize 3000x2250, adopted decoder, one core", kept["3000x2250"]),
        ("decode+resize 500x375, fastest candidate, one core", fastest["500x375"]),
        ("decode+resize 3000x2250, fastest candidate, one core", fastest["3000x2250"]),
        ("ratio feeding gs:// 50 ms / local", report["ratio_gcs_vs_local_feeding"]),
        ("ratio feeding per core / decode, 500x375", report["ratio_feeding_vs_decode_500x375"]),
        ("feeding: CPU per image, steady, whole process (ms)", report["feeding_cpu_per_image_ms"]),
        ("feeding: cores used, steady", report["feeding_cores_used"]),
        ("decode+resize 500x375: CPU per image, this process (ms)", decode_cpu_ms),
        ("ratio CPU per image decode / feeding", report["ratio_decode_cpu_vs_feeding_cpu"]),
        ("ratio feeding per core / decode, 3000x2250", report["ratio_feeding_vs_decode_large"]),
        ("ratio steady state pipeline/bare", report["ratio_steady"]),
        *([] if args.no_memory else [("ratio steady state 10xN/bare", report["ratio_steady_10x"])]),
        ("ratio end to end (N/bare rate)/whole process", report["ratio_end_to_end"]),
        ("ratio simple script/pipeline whole process", report["ratio_vs_simple_script"]),
    ]
    if not args.no_memory:
        rows.append(("peak RSS 10xN / N", report["memory_ratio_10x"]))
    if lite0 is not None:
        rows += [
            ("lite0 (224x224): bare model, steady (images/s)", lite0["bare_rate"]),
            (f"lite0: pipeline N={n}, steady state (images/s)", lite0["pipeline"]["steady_rate"]),
            (f"lite0: pipeline N={n}, whole process (s)", lite0["pipeline"]["wall_s"]),
            ("lite0: ratio steady state pipeline/bare", lite0["ratio_steady"]),
        ]
    for name, value in rows:
        print(f"{name:<58}{value:>10.2f}")


if __name__ == "__main__":
    main()
