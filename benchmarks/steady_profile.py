"""Where an image's CPU goes in the steady state of `python -m pipeline.run` (DirectRunner,
the near-zero model, photo-like JPEGs): the CPU of each of the run's threads over a window
of the steady state, read from /proc (exact), per labelled image and by role (reading,
decoding, Beam's bundle thread, the rest), and within each role the functions its time
went to, from py-spy's samples. The figures behind docs/performance.md's "Per-image CPU".

    .venv/bin/python -m benchmarks.steady_profile [--n 30000] [--window 20]

py-spy (requirements-dev.txt) reads the process from outside: it needs ptrace permission.
"""

from __future__ import annotations

import argparse
import collections
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

from benchmarks.run import cpu_seconds
from benchmarks.workload import build_trivial, made_once, make_photos

DISTINCT = 500  # photos made; every other name is a hard link to one of them
PROGRESS = re.compile(r"^labelling: ([\d,]+) of ")
# Leaf frames of a thread blocked in C (a queue's get, a lock, a condition): py-spy does not
# always see such a thread as idle. Their samples are set apart, not spread over the work.
WAITS = ("Workers._work", "ReadAndDecode._take", "Condition.wait", "Thread.run", "Event.wait")


def role(name: str) -> str:
    """A thread's part in the run, from its Python name (transforms/feed.py names its own)."""
    if name.startswith("decode_"):
        return "decode"
    if name.startswith("read_"):
        return "read"
    if name == "MainThread":
        return "beam"  # DirectRunner runs the bundles on the main thread
    return "other"  # Python threads of Beam's and the CLI's (progress, state sampler)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of a process, by its OS thread id (schedstat: in ns,
    where /proc's stat counts whole clock ticks, which a short-lived read thread never
    reaches)."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                found[int(tid)] = int(f.read().split()[0]) / 1e9
        except OSError:
            continue
    return found


def os_name(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def py_spy() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    found = beside if os.path.exists(beside) else shutil.which("py-spy")
    if not found:
        sys.exit("py-spy not found: .venv/bin/pip install -r requirements-dev.txt")
    return found


THREAD = re.compile(r"^thread \((\d+)\): (.*)$")


def samples(raw: str) -> tuple[dict[int, str], dict[str, collections.Counter]]:
    """From py-spy's raw output with --threads (the first frame is "thread (OS id): name"):
    each sampled thread's name, and self samples per function per role, the samples of a
    thread blocked in a wait counted apart under '(waiting)'."""
    names: dict[int, str] = {}
    found: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            frames = stack.split(";")
            thread = THREAD.match(frames[0])
            if not thread:
                continue
            names[int(thread[1])] = thread[2]
            leaf = re.sub(r":\d+\)$", ")", frames[-1])
            waiting = len(frames) == 1 or any(leaf.startswith(w + " ") for w in WAITS)
            found[role(thread[2])]["(waiting)" if waiting else leaf] += int(count)
    return names, found


def link_names(folder: str, n: int, photos: str) -> None:
    """n names in folder, hard links to the photos in turn."""
    os.makedirs(folder)
    sources = sorted(os.listdir(photos))
    for i in range(n):
        os.link(os.path.join(photos, sources[i % len(sources)]), f"{folder}/p{i:07d}.jpg")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30_000, help="names (hard links)")
    parser.add_argument("--window", type=int, default=20, help="seconds measured")
    parser.add_argument("--work", default="/tmp/beam-image-labeler-profile")
    parser.add_argument("--top", type=int, default=8, help="functions listed per role")
    args = parser.parse_args(argv)

    photos = made_once(os.path.join(args.work, "distinct"), lambda p: make_photos(DISTINCT, p))
    names = made_once(
        os.path.join(args.work, f"names{args.n}"), lambda p: link_names(p, args.n, photos)
    )
    model = build_trivial(os.path.join(args.work, "near_zero"))
    out = os.path.join(args.work, "out")
    shutil.rmtree(out, ignore_errors=True)
    raw = os.path.join(args.work, "samples.txt")
    err_path = os.path.join(args.work, "stderr.txt")

    cmd = [sys.executable, "-m", "pipeline.run", f"--input={names}/*.jpg", f"--output={out}"]
    # Portions as by default (the work read from the run's spool, a portion's job fed as one
    # bundle), long enough that the first (64 images) ends before the window opens and the
    # second holds the rest of the names: no portion's start or end inside the window.
    cmd += [f"--model={model}", "--date=2026-01-01", "--progress_interval=1"]
    cmd += ["--portion_seconds=3600"]
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stderr=err, stdout=subprocess.DEVNULL)
    try:
        while proc.poll() is None:  # the window opens once a fifth of the names are labelled
            lines = [PROGRESS.match(ln) for ln in open(err_path).read().splitlines()]
            done = [int(m[1].replace(",", "")) for m in lines if m]
            if done and done[-1] >= args.n // 5:
                break
            time.sleep(0.2)
        opened, before, process_before = time.time(), thread_cpu(proc.pid), cpu_seconds(proc.pid)
        spy = [py_spy(), "record", "--pid", str(proc.pid), "--duration", str(args.window)]
        spy += ["--rate", "100", "--nonblocking", "--threads", "--format", "raw", "-o", raw]
        subprocess.run(spy, capture_output=True, check=True)
        closed, after, process_after = time.time(), thread_cpu(proc.pid), cpu_seconds(proc.pid)
        os_names = {tid: os_name(proc.pid, tid) for tid in after}
        if proc.wait() != 0:
            sys.exit(f"the run failed:\n{open(err_path).read()[-2000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    stamps = ds.dataset(os.path.join(out, "predictions"), partitioning="hive").to_table(
        columns=["processed_at"]
    )
    seconds = stamps.column(0).cast("int64").to_numpy() / 1e6
    images = int(np.count_nonzero((seconds >= opened) & (seconds < closed)))

    cpu: collections.Counter = collections.Counter()
    names, by_role = samples(raw)
    for tid, used in after.items():
        part = role(names.get(tid, ""))
        if tid not in names:  # no Python thread py-spy saw run: TensorFlow's runtime threads
            part = f"native: {os_names[tid]}"  # (the model call), Beam's C helpers
        cpu[part] += used - before.get(tid, 0.0)
    # Threads that ended within the window took their CPU with them: the process's own count
    # (in clock ticks) keeps it.
    ended = (process_after - process_before) - sum(cpu.values())
    if ended > 0.05:
        cpu["threads that ended"] = ended
    per_image = {k: round(1e3 * v / images, 3) for k, v in sorted(cpu.items())}
    total = sum(cpu.values())
    # The model call's CPU: TensorFlow's own threads, and its frames on Beam's thread (where
    # TensorFlow runs small kernels inline). On a GPU worker it is the GPU's work.
    model = sum(v for k, v in cpu.items() if k.startswith("native: "))
    beam_samples = by_role.get("beam", collections.Counter())
    beam_working = sum(v for k, v in beam_samples.items() if k != "(waiting)")
    in_tf = sum(v for k, v in beam_samples.items() if "(tensorflow/" in k)
    model += cpu["beam"] * in_tf / beam_working if beam_working else 0.0
    where = {}
    for part, counts in sorted(by_role.items()):
        working = sum(v for k, v in counts.items() if k != "(waiting)")
        where[part] = {
            k: round(per_image.get(part, 0) * v / working, 3)
            for k, v in counts.most_common()
            if k != "(waiting)" and working
        }
        where[part] = dict(list(where[part].items())[: args.top])
    report = {
        "machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "window_s": round(closed - opened, 1),
        "images_in_window": images,
        "rate": round(images / (closed - opened), 1),
        "cores_used": round(total / (closed - opened), 2),
        "cpu_ms_per_image": round(1e3 * total / images, 3),
        "cpu_ms_per_image_outside_decode": round(1e3 * (total - cpu["decode"]) / images, 3),
        "cpu_ms_per_image_in_the_model_call": round(1e3 * model / images, 3),
        "cpu_ms_per_image_outside_decode_and_model": round(
            1e3 * (total - cpu["decode"] - model) / images, 3
        ),
        "cpu_ms_per_image_by_role": per_image,
        "ms_per_image_by_function": where,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
