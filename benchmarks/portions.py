"""Runs in portions (issue 25), measured (not a test): DirectRunner, the near-zero model on the
scale benchmark's hard-linked JPEGs, and EfficientNet-B3-sized on photo-like JPEGs.

  big:    only day1's --big run (against the --small run of an earlier invocation);
  day1:   day 1 with the default portions at --small, --n and --big URIs: wall time, steady
          rate, peak RSS (the largest process, as benchmarks.scale reads it, and the whole
          process tree, sampled), portions committed, and the time between two portions;
  single: day 1 at --n with --portion_seconds 0 (one job), against day1's --n run;
  b3:     --photos photos, B3-sized model, default portions against --portion_seconds 0
          (b3_reversed: the same in the other order);
  gap:    a run of 2 x --gap_portion URIs in two full portions, each step timed in the
          process (HARNESS): what the time between two portions is made of;
  kill:   a run at --n SIGKILLed (its process group) at --kill_at of its URIs labelled; the
          rows it committed, the re-run's count (the work left plus the work lost), and every
          URI in the output exactly once.

python -m benchmarks.portions [--small 100000] [--n 1000000] [--big 3000000] [--photos 3000]
    [--work DIR] [--phases day1,single,b3,kill,gap] [--gap_portion 100000]
(or python -m benchmarks.scale --portions ...). The trees, photos and models in --work are
kept and reused. Prints one JSON object; figures go to docs/performance.md ("Runs in portions").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from benchmarks.run import ENV
from benchmarks.scale import BATCH, DISTINCT, SIZE, jpeg, make_tree
from benchmarks.workload import build_b3, build_trivial, made_once, make_photos

DATE = "2026-01-01"
SUMMARY = re.compile(r"labelled ([\d,]+) of ([\d,]+) images")
PORTIONS = re.compile(r"([\d,]+) portions? committed")
PROGRESS = re.compile(r"labelling: ([\d,]+) of ([\d,]+) images")
PART = re.compile(r"part-(.+)-(\d{5})-of-(\d{5})\.parquet$")
PAGE = os.sysconf("SC_PAGE_SIZE")


def group_rss(pgid: int) -> tuple[int, int]:
    """(bytes resident, process count) of every live process in the process group."""
    total = count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            if int(fields[2]) != pgid:  # field 5 of stat: the process group
                continue
            with open(f"/proc/{name}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
            count += 1
        except (OSError, IndexError, ValueError):
            continue
    return total, count


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores; /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def run_group(cmd: list[str], poll=None, env: dict | None = None) -> dict:
    """Runs cmd in a process group of its own; samples the group's RSS every 0.25 s. `poll`
    (called with the stderr file's path at each sample) may return True to SIGKILL the group.
    Returns wall time, exit code, peak RSS of the largest process (wait4's ru_maxrss, what
    benchmarks.run.run_child reports), the sampled peak sum over the group, and stderr."""
    started, busy = time.perf_counter(), busy_cpu_seconds()
    with tempfile.NamedTemporaryFile("w+b", suffix=".err") as err, tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, env=env or ENV, stdout=out, stderr=err, start_new_session=True)
        tree_peak = procs = 0
        series = []  # (seconds, group RSS MiB) every 10 s: does memory grow portion by portion?
        killed_at = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss, count = group_rss(proc.pid)
            tree_peak, procs = max(tree_peak, rss), max(procs, count)
            now = time.perf_counter() - started
            if not series or now - series[-1][0] >= 10:
                series.append((round(now), rss // 2**20))
            if killed_at is None and poll is not None and poll(err.name):
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = time.perf_counter() - started
            time.sleep(0.25)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        busy = busy_cpu_seconds() - busy
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if proc.returncode and killed_at is None:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {
        "wall_s": round(wall, 1),
        "exit": proc.returncode,
        "peak_rss_mib": usage.ru_maxrss // 1024,
        "tree_peak_rss_mib": tree_peak // 2**20,
        "processes": procs,
        # Cores the run used on average, and those everything else on the machine used.
        "cores_used": round((usage.ru_utime + usage.ru_stime) / wall, 2),
        "others_cores": round((busy - usage.ru_utime - usage.ru_stime) / wall, 2),
        "rss_every_10s_mib": series,
        "killed_at_s": None if killed_at is None else round(killed_at, 1),
        "stderr": stderr,
    }


def label_cmd(inputs: str, out: str, model: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline.run",
        f"--input={inputs}",
        f"--output={out}",
        f"--model={model}",
        f"--date={DATE}",
        *extra,
    ]


def part_files(out: str) -> list[str]:
    part = os.path.join(out, "predictions", f"date={DATE}")
    if not os.path.isdir(part):
        return []
    return sorted(os.path.join(part, n) for n in os.listdir(part) if n.endswith(".parquet"))


def committed_rows(out: str) -> int:
    """Prediction rows in the partition's committed files, from their Parquet footers."""
    total = 0
    for path in part_files(out):
        try:
            total += pq.ParquetFile(path).metadata.num_rows
        except OSError:  # renamed away between the listing and the read: not there
            continue
    return total


def by_portion(out: str, before: set[str]) -> dict:
    """From this run's files: rows and processed_at span of each portion (its files share the
    portion's run id), the steady rate as benchmarks.scale reads it (10th to 90th percentile
    of all stamps), and the gaps between one portion's last stamp and the next one's first."""
    files = [p for p in part_files(out) if p not in before]
    if not files:
        return {"labelled": 0}
    spans: dict[str, list[np.ndarray]] = {}
    for path in files:
        found = PART.search(os.path.basename(path))
        key = found[1] if found else path
        stamps = pq.read_table(path, columns=["processed_at"]).column(0).cast("int64").to_numpy()
        spans.setdefault(key, []).append(stamps)
    every = np.sort(np.concatenate([np.concatenate(s) for s in spans.values()])) / 1e6
    result: dict = {"labelled": len(every)}
    if len(every) > 100:
        lo, hi = np.percentile(every, [10, 90])
        result["steady_rate"] = round(0.8 * len(every) / (hi - lo), 1)
    ordered = sorted(
        (
            float(np.concatenate(s).min()) / 1e6,
            float(np.concatenate(s).max()) / 1e6,
            sum(len(x) for x in s),
        )
        for s in spans.values()
    )
    gaps = [b[0] - a[1] for a, b in zip(ordered, ordered[1:], strict=False)]
    result["portion_files"] = len(ordered)
    result["portion_rows"] = [n for _, _, n in ordered]
    result["portion_span_s"] = [round(e - s, 1) for s, e, _ in ordered]
    if gaps:
        result["gap_s"] = {
            "n": len(gaps),
            "median": round(float(np.median(gaps)), 2),
            "max": round(float(max(gaps)), 2),
            "sum": round(float(sum(gaps)), 1),
        }
    result["first_stamp_to_last_s"] = round(ordered[-1][1] - ordered[0][0], 1)
    return result


def labelled(inputs: str, out: str, model: str, *extra: str, poll=None) -> dict:
    """One run of the command: run_group's figures, the summary's counts, per-portion spans."""
    before = set(part_files(out))
    started = time.time()
    result = run_group(label_cmd(inputs, out, model, *extra), poll=poll)
    stderr = result.pop("stderr")
    lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith("labelling:")]
    result["summary"] = lines[-1:] if lines else []
    found = SUMMARY.search(stderr)
    if found:
        result["summary_labelled"] = int(found[1].replace(",", ""))
    committed = PORTIONS.search(stderr)
    result["portions_committed"] = int(committed[1].replace(",", "")) if committed else None
    spans = by_portion(out, before)
    if "portion_files" in spans and spans["portion_files"]:
        first = min(
            pq.read_table(p, columns=["processed_at"]).column(0).cast("int64").to_numpy().min()
            for p in part_files(out)
            if p not in before
        )
        spans["start_to_first_stamp_s"] = round(first / 1e6 - started, 1)
    result.update(spans)
    return result


def tree(work: str, name: str, n: int, seeds: str) -> str:
    """work/name with n hard-linked names (made once: a marker says it is whole)."""
    return made_once(os.path.join(work, name), lambda root: make_tree(root, n, seeds))


def make_seeds(folder: str) -> None:
    """The DISTINCT JPEGs every tree's names are hard links to."""
    os.makedirs(folder)
    for i in range(DISTINCT):
        jpeg(i, os.path.join(folder, f"s{i:04d}.jpg"))


def fresh(path: str) -> str:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    return path


def trivial_flags() -> list[str]:
    return [f"--image_size={SIZE}", f"--batch_size={BATCH}", "--quiet"]


def kill_run(inputs: str, out: str, model: str, n: int, at: float) -> dict:
    """SIGKILL at `at` of n labelled (the progress line), then the same command again."""
    extra = [f"--image_size={SIZE}", f"--batch_size={BATCH}", "--progress_interval=1"]
    seen = {"labelled": 0}

    def poll(err_path: str) -> bool:
        with open(err_path, "rb") as f:
            f.seek(max(0, os.path.getsize(err_path) - 4096))
            tail = f.read().decode(errors="replace")
        found = PROGRESS.findall(tail)
        if found:
            seen["labelled"] = int(found[-1][0].replace(",", ""))
        return seen["labelled"] >= at * n

    first = labelled(inputs, out, model, *extra, poll=poll)
    kept = committed_rows(out)
    again = labelled(inputs, out, model, *extra)
    table = ds.dataset(os.path.join(out, "predictions"), partitioning="hive").to_table(
        columns=["uri"]
    )
    distinct = pc.count_distinct(table.column("uri")).as_py()
    return {
        "killed_run": {
            k: first.get(k)
            for k in ("killed_at_s", "exit", "peak_rss_mib", "tree_peak_rss_mib", "portion_files")
        },
        "labelled_at_kill_progress": seen["labelled"],
        "committed_at_kill": kept,
        "lost_in_flight": seen["labelled"] - kept,
        "rerun": {
            k: again.get(k)
            for k in (
                "wall_s",
                "exit",
                "summary_labelled",
                "portions_committed",
                "summary",
                "start_to_first_stamp_s",
            )
        },
        "rerun_labelled_beyond_kill_progress": (again.get("summary_labelled") or 0)
        - (n - seen["labelled"]),
        "output_rows": table.num_rows,
        "output_distinct_uris": distinct,
        "exactly_once": table.num_rows == distinct == n,
    }


# Runs the command in this process with timestamps around a run in portions' steps (nothing
# in the pipeline changes; the first portion is made GAP_PORTION work units, so that every
# portion is a full one): what the time between two portions is made of.
HARNESS = """
import functools, sys, time
log = open(sys.argv[1], "a")
def mark(name):
    log.write(f"{time.time():.3f} {name}\\n"); log.flush()
def around(owner, attr, name):
    f = getattr(owner, attr)
    @functools.wraps(f)
    def wrapped(*a, **k):
        mark(name + " start")
        try:
            return f(*a, **k)
        finally:
            mark(name + " end")
    setattr(owner, attr, wrapped)
import pipeline.portions as portions, pipeline.run as run, transforms.feed as feed
import transforms.output as output
portions.FIRST_PORTION = int(sys.argv[2])
around(portions, "spool_work", "list+join+spool")
around(portions.Spool, "take", "take")
around(run, "build_pipeline", "build_pipeline")
around(run, "remove_temp", "remove_temp")
around(output.ParquetSink, "flush", "parquet_flush")
state = {"first": True, "last": 0.0}
process = feed.ReadAndDecode.process
def counted(self, work):
    if state["first"]:
        state["first"] = False
        mark("first ReadAndDecode element")
    state["last"] = time.time()
    return process(self, work)
feed.ReadAndDecode.process = counted
def job(self, pipeline):
    state["first"] = True
    mark("pipeline.run start")
    self.current = pipeline.run()
    mark("pipeline.run returned")
    self.current.wait_until_finish()
    log.write(f"{state['last']:.3f} last ReadAndDecode element\\n")
    mark("wait_until_finish end")
    self.add(run.summary.counters(self.current))
    self.finished += 1
run.Jobs.run = job
sys.argv = ["pipeline.run", *sys.argv[3:]]
run.main()
"""


def gap_breakdown(work: str, seeds: str, model: str, per_portion: int) -> dict:
    """A run of 2 x per_portion URIs in two full portions, timed step by step (HARNESS)."""
    root = tree(work, f"t{2 * per_portion}", 2 * per_portion, seeds)
    out = fresh(os.path.join(work, "out", "gap"))
    log = os.path.join(work, "gap.log")
    if os.path.exists(log):
        os.unlink(log)
    cmd = label_cmd(f"{root}/**.jpg", out, model, *trivial_flags())
    started = time.time()
    result = run_group([sys.executable, "-c", HARNESS, log, str(per_portion), *cmd[3:]])
    events = []
    with open(log) as f:
        for line in f:
            at, name = line.rstrip("\n").split(" ", 1)
            events.append((float(at), name))
    for path in part_files(out):
        found = PART.search(os.path.basename(path))
        stamps = pq.read_table(path, columns=["processed_at"]).column(0).cast("int64").to_numpy()
        portion = found[1][-5:] if found else path  # part-<run id>-<portion>-SSSSS-of-NNNNN
        events.append((stamps.min() / 1e6, f"portion {portion}: first prediction stamp"))
        events.append((stamps.max() / 1e6, f"portion {portion}: last prediction stamp"))
    events.sort(key=lambda e: e[0])  # stable: the log is in order; stamps fall between
    return {
        "per_portion": per_portion,
        "wall_s": result["wall_s"],
        "peak_rss_mib": result["peak_rss_mib"],
        "summary": result["stderr"].strip().splitlines()[-1:],
        "events_s": [[round(at - started, 2), name] for at, name in events],
    }


def create_cost(n: int) -> dict:
    """What a portion's first step costs on DirectRunner for n work units, apart from any
    image, as pipeline/graph.py made it before portions on DirectRunner read their work from
    the spool inside the job: beam.Create of n one-input Work tuples (with its Reshuffle; and
    without) into a no-op, and pickling them. Run in a fresh process:
    python -c 'from benchmarks.portions import create_cost; print(create_cost(100_000))'."""
    import logging
    import pickle

    import apache_beam as beam

    from transforms.storage.listing import Listed

    logging.getLogger().setLevel(logging.ERROR)
    work = [
        (Listed(f"/tmp/x/d{i // 1000:04d}/p{i:07d}.jpg", 1234, f"1234:{i}", ""),) for i in range(n)
    ]
    result: dict = {"n": n}
    t0 = time.perf_counter()
    data = [pickle.dumps(w, protocol=pickle.HIGHEST_PROTOCOL) for w in work]
    result["pickle_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    _ = [pickle.loads(d) for d in data]
    result["unpickle_s"] = round(time.perf_counter() - t0, 2)
    for reshuffle in (True, False):
        t0 = time.perf_counter()
        pipeline = beam.Pipeline(runner="DirectRunner")
        _ = pipeline | beam.Create(work, reshuffle=reshuffle) | beam.Map(lambda w: None)
        built = time.perf_counter()
        pipeline.run().wait_until_finish()
        done = time.perf_counter()
        key = "create_reshuffle" if reshuffle else "create_no_reshuffle"
        result[key] = {"build_s": round(built - t0, 2), "run_s": round(done - built, 2)}
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=3_000_000)
    parser.add_argument("--photos", type=int, default=3000)
    parser.add_argument("--kill_at", type=float, default=0.75)
    parser.add_argument("--work", default="/tmp/beam-image-labeler-portions")
    parser.add_argument("--phases", default="day1,single,b3,kill,gap")
    parser.add_argument("--gap_portion", type=int, default=100_000)
    parser.add_argument(
        "--big_stop", type=int, default=0, help="SIGKILL the --big run once it committed this many"
    )
    args = parser.parse_args(argv)

    def told(signum, _frame):  # on a shared machine: say what ended the benchmark
        print(
            f"benchmarks.portions: {signal.Signals(signum).name} at {time.ctime()}", file=sys.stderr
        )
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, told)
    phases = set(args.phases.split(","))
    os.makedirs(args.work, exist_ok=True)
    saved = os.path.join(args.work, "report.json")
    report: dict = {}
    if os.path.exists(saved):  # an earlier invocation's figures in this --work: added to
        with open(saved) as f:
            report = json.load(f)
    report |= {
        "machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.ctime(),
        "load_at_start": os.getloadavg(),
    }
    seeds = made_once(os.path.join(args.work, "seeds"), make_seeds)
    model = build_trivial(os.path.join(args.work, "near_zero"))
    t0 = time.perf_counter()
    trees = {}
    if phases & {"day1", "single", "kill"}:
        trees["n"] = tree(args.work, f"t{args.n}", args.n, seeds)
    if "big" in phases:
        trees["big"] = tree(args.work, f"t{args.big}", args.big, seeds)
    if "day1" in phases:
        trees["small"] = tree(args.work, f"t{args.small}", args.small, seeds)
        if args.big:
            trees["big"] = tree(args.work, f"t{args.big}", args.big, seeds)
    if trees:
        report["make_trees_s"] = round(time.perf_counter() - t0, 1)  # 0 when kept from before

    def out(name: str) -> str:
        return fresh(os.path.join(args.work, "out", name))

    def save() -> None:  # after each run, so a run cut short keeps what it measured
        with open(saved, "w") as f:
            json.dump(report, f, indent=1)

    def day1(n: int, key: str, stop_at: int = 0) -> None:
        root = out(f"day1_{n}")
        poll = None
        if stop_at:  # SIGKILL once stop_at rows are committed (the portions after are not run)
            rows: dict[str, int] = {}

            def poll(_err: str) -> bool:
                for path in part_files(root):
                    if path not in rows:
                        rows[path] = pq.ParquetFile(path).metadata.num_rows
                return sum(rows.values()) >= stop_at

        result = labelled(f"{trees[key]}/**.jpg", root, model, *trivial_flags(), poll=poll)
        if stop_at:
            result["stopped_after_committing"] = stop_at
        result["load_after"] = os.getloadavg()
        report.setdefault("day1_portions", {})[str(n)] = result
        base = report["day1_portions"].get(str(args.small))
        if base and n != args.small:
            report[f"ratio_{n}_steady_rate"] = round(result["steady_rate"] / base["steady_rate"], 3)
            for k in ("peak_rss_mib", "tree_peak_rss_mib"):
                report[f"ratio_{n}_{k}"] = round(result[k] / base[k], 3)
        save()

    # In this order: day 1 at --small and --n, the one job at --n, the kill, the --big run,
    # the gap, the B3 pairs.
    if "day1" in phases:
        day1(args.small, "small")
        day1(args.n, "n")
    if "single" in phases:
        single = labelled(
            f"{trees['n']}/**.jpg",
            out(f"single_{args.n}"),
            model,
            *trivial_flags(),
            "--portion_seconds=0",
        )
        single["load_after"] = os.getloadavg()
        report["single_job"] = single
        portioned = report.get("day1_portions", {}).get(str(args.n))
        if portioned:
            report["ratio_wall_portions_over_single"] = round(
                portioned["wall_s"] / single["wall_s"], 3
            )
        save()
    if "kill" in phases:
        report["kill"] = kill_run(
            f"{trees['n']}/**.jpg", out(f"kill_{args.n}"), model, args.n, args.kill_at
        )
        save()
    if {"day1", "big"} & phases and "big" in trees:
        day1(args.big, "big", args.big_stop)
    if "gap" in phases:
        report["gap"] = gap_breakdown(args.work, seeds, model, args.gap_portion)
    # b3: portions, then one job; b3_reversed: one job, then portions (with b3: ABBA).
    for phase in [p for p in ("b3", "b3_reversed") if p in phases]:
        photos = made_once(
            os.path.join(args.work, f"photos{args.photos}"), lambda p: make_photos(args.photos, p)
        )
        b3 = build_b3(os.path.join(args.work, "b3"))
        runs = report[phase] = {"photos": args.photos}
        order = [("portions", []), ("single", ["--portion_seconds=0"])]
        for name, extra in order[:: -1 if phase == "b3_reversed" else 1]:
            runs[name] = labelled(f"{photos}/*.jpg", out(f"b3_{name}"), b3, "--quiet", *extra)
            runs[name]["load_after"] = os.getloadavg()
            save()
        runs["ratio_wall"] = round(runs["portions"]["wall_s"] / runs["single"]["wall_s"], 3)
    report["load_at_end"] = os.getloadavg()
    save()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
