"""Helpers for tests/test_flink.py: a real Flink cluster on 127.0.0.1 (scripts/flink_cluster.sh),
Beam's Flink job server (scripts/flink_job_server.sh), run_flink.sh runs and Flink's REST API.

Where Java or Maven Central is missing the Flink tests skip with one line, except in CI
(the CI environment variable is set), where that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest
from PIL import Image

from tests.gcs_servers import free_port
from tests.images import SAMPLES, SAMPLES_DIR, bad_files, encode, patch_image
from tests.savedmodels import probe_class

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "scripts" / "flink_cluster.sh"
JOB_SERVER = ROOT / "scripts" / "flink_job_server.sh"
UNAVAILABLE = 3  # the scripts' exit status when a tool or a download is missing


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(what: str) -> None:
    """Skip on a user's machine; fail in CI, where Java, Maven and the registries must be."""
    if in_ci():
        pytest.fail(f"CI must run the Flink tests, but: {what}", pytrace=False)
    pytest.skip(f"Flink tests need Java, Maven and Maven Central/PyPI: {what}")


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def job_server_jar() -> str:
    """The job-server jar (fetched with Maven the first time), or a skip/failure."""
    for tool in ("java", "javac", "mvn"):
        if not shutil.which(tool):
            unavailable(f"'{tool}' is not on PATH")
    proc = subprocess.run([str(JOB_SERVER), "--quiet"], capture_output=True, text=True, timeout=900)
    if proc.returncode == UNAVAILABLE:
        unavailable(one_line(proc.stderr))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


class FlinkCluster:
    """scripts/flink_cluster.sh start/stop in its own folder, plus what tests ask of it."""

    def __init__(self, folder: pathlib.Path, taskmanagers: int = 1, slots: int = 1):
        self.dir = folder
        self.taskmanagers, self.slots = taskmanagers, slots
        self.rest_port = free_port()
        self.master = f"127.0.0.1:{self.rest_port}"
        # Each TaskManager starts its own SDK workers with this (Beam's PROCESS environment).
        self.worker_command = str(folder / "beam-worker")
        self.pids: dict[str, int] = {}

    def start_command(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                str(CLUSTER),
                "start",
                f"--dir={self.dir}",
                f"--taskmanagers={self.taskmanagers}",
                f"--slots={self.slots}",
                f"--rest_port={self.rest_port}",
                # Should pytest itself die, the cluster stops within a second.
                f"--watch_pid={os.getpid()}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )

    def start(self) -> FlinkCluster:
        proc = self.start_command()
        if proc.returncode == UNAVAILABLE:
            unavailable(one_line(proc.stderr))
        assert proc.returncode == 0, proc.stderr[-3000:] + self.logs()
        self.pids = pid_files(self.dir)
        return self

    def stop(self) -> None:
        subprocess.run([str(CLUSTER), "stop", f"--dir={self.dir}"], capture_output=True, timeout=60)
        for pid in self.pids.values():  # every process it started is gone
            assert not alive(pid), f"process {pid} outlived flink_cluster.sh stop"

    def logs(self, lines: int = 20) -> str:
        out = []
        for path in sorted((self.dir / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def rest(self, path: str):
        with urllib.request.urlopen(f"http://{self.master}{path}", timeout=5) as response:
            return json.load(response)

    def jobs(self) -> list[dict]:
        return self.rest("/jobs/overview")["jobs"]

    def taskmanager_pid(self, resource_id: str) -> int:
        return self.pids[resource_id]  # flink_cluster.sh names TaskManager N 'taskmanager-N'

    def sdk_workers(self) -> list[int]:
        """The processes the TaskManagers have started: the Python SDK workers and their
        boot scripts."""
        taskmanagers = [pid for name, pid in self.pids.items() if name.startswith("taskmanager")]
        return [pid for pid in process_tree(taskmanagers) if pid not in taskmanagers]

    def hold_workers(
        self, proc: subprocess.Popen, timeout: float = 300, ignore: frozenset = frozenset()
    ) -> list[int]:
        """Stops (SIGSTOP) the SDK workers as soon as the first has started, and any they
        started meanwhile: from then on the job cannot progress, let alone finish, until
        release_workers. A point in the job a test holds it at, whatever the machine's speed.
        `ignore`: workers of an earlier job, which may not have exited yet."""
        deadline = time.monotonic() + timeout
        held: list[int] = []
        while not held:
            assert proc.poll() is None and time.monotonic() < deadline, "no SDK worker started"
            time.sleep(0.05)
            while fresh := [p for p in self.sdk_workers() if p not in held and p not in ignore]:
                for pid in fresh:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                held += fresh
        return held

    @staticmethod
    def release_workers(held: list[int]) -> None:
        for pid in held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def cancel_a_held_job(
    cluster: FlinkCluster, proc: subprocess.Popen, send, before: set, ignore=frozenset()
) -> tuple[str, int, str]:
    """Once run_flink.sh's (proc's) next job, the first not in `before`, runs, holds it there
    (its SDK workers stopped, those in `ignore` aside, so it cannot finish first), calls
    send() (the signal), waits until Flink reports the job CANCELLING or CANCELED and lets
    the workers go. Returns (job id, exit status, stderr)."""
    job = None
    deadline = time.monotonic() + 300
    while job is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        job = next((j for j in cluster.jobs() if j["jid"] not in before), None)
    assert job, "the job never reached the cluster"
    path = f"/jobs/{job['jid']}"
    held = cluster.hold_workers(proc, ignore=ignore)
    try:
        assert cluster.rest(path)["state"] == "RUNNING"
        send()
        deadline = time.monotonic() + 60
        while (state := cluster.rest(path)["state"]) not in ("CANCELLING", "CANCELED"):
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                _, err = proc.communicate(timeout=30)
                raise AssertionError(f"the job was not cancelled (still {state}):\n{err[-3000:]}")
            time.sleep(0.1)
    finally:
        cluster.release_workers(held)
    status, err = finish(proc, timeout=120)
    return job["jid"], status, err


def pid_files(folder: pathlib.Path) -> dict[str, int]:
    """flink_cluster.sh's pid files ("PID START_TIME"), by process name."""
    return {p.stem: int(p.read_text().split()[0]) for p in folder.glob("*.pid")}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def run_flink(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.Popen:
    """./run_flink.sh ARGS in its own process group (so the test can end all it started)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [str(ROOT / "run_flink.sh"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: int = 400) -> tuple[int, str]:
    """Waits for a run_flink.sh process; returns (status, stderr). Whatever is left of its
    process group (the job server, workers) is asserted gone, then killed anyway."""
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        leftover = group_members(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not leftover, f"run_flink.sh left processes running: {leftover}"
    return proc.returncode, err


def group_members(pgid: int) -> list[str]:
    """Live processes in the process group, as 'pid command'."""
    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            try:  # it may end between the two reads
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")[:120]
            except OSError:
                continue
            found.append(f"{stat.parent.name} {cmdline.decode(errors='replace')}")
    return found


SUMMARY = re.compile(
    r"^labelled ([\d,]+) of ([\d,]+) images.*?, ([\d,]+) failed(?: \((.*?)\))?"
    r"(?:, ([\d,]+) already in the output)?.*? in ",
    re.M,
)


def summary(stderr: str) -> dict:
    """The run's summary line, parsed: labelled, read, failed, reasons, skipped."""
    found = SUMMARY.search(stderr)
    assert found, f"no summary line in:\n{stderr[-3000:]}"
    labelled, read, failed, reasons, skipped = found.groups()

    def number(text: str | None) -> int:
        return int((text or "0").replace(",", ""))

    return {
        "labelled": number(labelled),
        "read": number(read),
        "failed": number(failed),
        "reasons": reasons or "",
        "skipped": number(skipped),
    }


def process_tree(roots: list[int]) -> list[int]:
    """The processes and all their descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [p for p in roots if alive(p)]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def listening_addresses(pids: list[int]) -> set[str]:
    """IPv4/IPv6 addresses that these processes' listening TCP sockets are bound to."""
    inodes = set()
    for pid in pids:
        try:  # a process of the tree may end between the tree's listing and this one
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                addresses.add(_address(fields[1].split(":")[0]))
    return addresses


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    raw = b"".join(words)
    if raw[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped
        return ".".join(str(b) for b in raw[12:])
    return raw.hex()


DATE = "2025-07-01"
COMMON = ["--image_size=32", f"--date={DATE}", "--max_error_ratio=1", "--quiet"]


def by_uri(rows: list[dict]) -> dict[str, dict]:
    uris = [r["uri"] for r in rows]
    assert len(uris) == len(set(uris)), "a URI was written twice"
    return {r["uri"]: r for r in rows}


def make_images(root, patches: int) -> dict:
    """Photo crops (JPEG), lit-patch PNGs whose top class is known, and the bad files."""
    root.mkdir(parents=True)
    good, expected, bad = [], {}, []
    for name in SAMPLES:
        photo = Image.open(SAMPLES_DIR / f"{name}.jpg")
        for j, box in enumerate([(0, 0, 200, 150), (100, 50, 400, 300), None]):
            path = root / f"{name}_{j}.jpg"
            path.write_bytes(encode(photo.crop(box) if box else photo, "JPEG", quality=90))
            good.append(str(path))
    for i in range(patches):
        row, col, channel = (i // 4) % 4, i % 4, (i // 16) % 3
        path = root / f"patch_{i:04d}.png"
        path.write_bytes(encode(Image.fromarray(patch_image(64, row, col, channel)), "PNG"))
        good.append(str(path))
        expected[str(path)] = probe_class(row, col, channel)
    for name, data in bad_files((SAMPLES_DIR / "cat.jpg").read_bytes()).items():
        (root / name).write_bytes(data)
        bad.append(str(root / name))
    return {"root": root, "good": good, "expected": expected, "bad": bad}


def cluster_args(flink: FlinkCluster, images: dict, out, model: str) -> list[str]:
    return [
        f"--flink_master={flink.master}",
        f"--worker_command={flink.worker_command}",
        f"--input={images['root']}/*",
        f"--output={out}",
        f"--model={model}",
        "--parallelism=2",
        *COMMON,
    ]


def labelling_vertex(flink: FlinkCluster, job_id: str) -> dict | None:
    for vertex in flink.rest(f"/jobs/{job_id}")["vertices"]:
        if "RunInference" in vertex["name"]:
            return vertex
    return None
