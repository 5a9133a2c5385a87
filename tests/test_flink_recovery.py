"""Flink runs that lose work and get it back: a TaskManager SIGKILLed while the job labels,
Ctrl-C on a run in portions (each a Flink job) keeping the committed ones; and the cluster
script refusing a taken port or a cluster still running. Apart from tests/test_flink.py so the
two files run on two workers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import pytest

from tests.flink_cluster import (
    CLUSTER,
    FlinkCluster,
    alive,
    by_uri,
    cluster_args,
    finish,
    group_members,
    labelling_vertex,
    make_images,
    pid_files,
    process_tree,
    run_flink,
    summary,
)
from tests.runs import read_rows

pytestmark = pytest.mark.slow


def test_taskmanager_killed_while_labelling(jar, probe_model, tmp_path):
    """Two TaskManagers of two slots each, --parallelism 2 (one subtask on each: slots are
    spread); one running a labelling subtask is SIGKILLed once images have reached it.
    Flink restarts the failed region in the two slots left, the command counts the
    restarts, and every URI is written once. (With one slot each, the job would wait for a
    new TaskManager: a region of this batch job needs both slots at once.)"""
    images = make_images(tmp_path / "images", patches=1500)
    flink = FlinkCluster(tmp_path / "cluster", taskmanagers=2, slots=2).start()
    try:
        out = tmp_path / "out"
        args = cluster_args(flink, images, out, probe_model)
        proc = run_flink(*args)
        killed = victim = job_id = None
        deadline = time.monotonic() + 300
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            jobs = [j for j in flink.jobs() if j["state"] == "RUNNING"]
            if not jobs:
                continue
            job_id = jobs[0]["jid"]
            vertex = labelling_vertex(flink, job_id)
            if not vertex or vertex["status"] != "RUNNING":
                continue
            if vertex["metrics"]["read-records"] == 0:
                continue  # no image has reached the labelling task yet
            detail = flink.rest(f"/jobs/{job_id}/vertices/{vertex['id']}")
            subtasks = detail["subtasks"]
            assert len(subtasks) == 2
            busy = [t for t in subtasks if t["metrics"]["read-records"] > 0] or subtasks
            victim = busy[0]["taskmanager-id"]
            os.kill(flink.taskmanager_pid(victim), signal.SIGKILL)
            metrics = vertex["metrics"]
            killed = (time.monotonic(), metrics["read-records"], metrics["write-records"])
        assert killed, "the labelling task was never seen running with output" + flink.logs()
        status, err = finish(proc)
        finished = time.monotonic()
        assert not alive(flink.taskmanager_pid(victim))

        job = flink.rest(f"/jobs/{job_id}")
        history = flink.rest(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
        # The run's last job says the state and the restarts of all its jobs (one a portion).
        restarts = re.search(r"Flink job \w+ (\w+); (\d+) restarts?", err)
        print(
            f"\nTaskManager {victim} killed with the labelling task running ({killed[1]} records "
            f"in, {killed[2]} out); job {job['state']} {finished - killed[0]:.1f} s later; "
            f"run_flink.sh status {status}; {len(history)} failure(s) in Flink's exception "
            f"history: {[e['exceptionName'] for e in history]}; "
            f"run_flink.sh said: {restarts.group(0) if restarts else None}"
        )
        assert history, "Flink recorded no failure: the kill did not hit the job"
        assert restarts, err[-3000:]
        if status == 0:  # recovered on the TaskManager left: the restarts are counted
            assert restarts.group(1) == "FINISHED" and int(restarts.group(2)) >= 1
        else:  # the job ran out of restart attempts: exit 4, one line; the same command again
            assert status == 4, err[-3000:]
            assert "error: the job failed: " in err.splitlines()[-1], err[-3000:]
            assert "Traceback" not in err
            status, err = finish(run_flink(*args))
        assert status == 0, err[-3000:] + flink.logs()
    finally:
        flink.stop()
    # The killed TaskManager's SDK workers went with the cluster.
    assert not [p for p in group_members(flink.taskmanager_pid(victim))]

    # Every URI exactly once, whole files only, each patch with its expected top class.
    predictions = by_uri(read_rows(str(out), "predictions"))
    errors = by_uri(read_rows(str(out), "errors"))
    assert sorted(predictions) == sorted(images["good"])
    assert sorted(errors) == sorted(images["bad"])
    for uri, top in images["expected"].items():
        assert predictions[uri]["class_ids"][0] == top


def test_ctrl_c_keeps_the_committed_portions(cluster, probe_model, tmp_path):
    """A run in portions (each a Flink job, at --parallelism 2): Ctrl-C once two portions
    are committed cancels the job in flight and exits 130 saying what is kept; the
    committed portions stay, and the same command labels only the rest, each URI once."""
    images = make_images(tmp_path / "images", patches=200)  # 223 inputs: 64, 64 and 95
    out = tmp_path / "out"
    args = [*cluster_args(cluster, images, out, probe_model), "--portion_seconds=1"]
    proc = run_flink(*args)
    deadline = time.monotonic() + 300
    while len(read_rows(str(out), "predictions") + read_rows(str(out), "errors")) < 128:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "two portions were never committed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    status, err = finish(proc, timeout=120)
    assert status == 130, err[-3000:]
    kept = read_rows(str(out), "predictions") + read_rows(str(out), "errors")
    total = len(images["good"]) + len(images["bad"])
    assert 128 <= len(kept) < total
    assert f"stopped; {len(read_rows(str(out), 'predictions')):,} predictions" in err, err
    assert "Traceback" not in err

    status, err = finish(run_flink(*args))
    assert status == 0, err[-3000:]
    assert summary(err)["skipped"] == len(kept)
    rows = read_rows(str(out), "predictions") + read_rows(str(out), "errors")
    assert sorted(r["uri"] for r in rows) == sorted(images["good"] + images["bad"])


def test_cluster_start_refuses_a_taken_port(tmp_path):
    """A port in use: one line naming it, exit 2, nothing started."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        flink = FlinkCluster(tmp_path / "cluster")
        flink.rest_port = port
        proc = flink.start_command()
    finally:
        listener.close()
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"flink_cluster.sh: error: port {port} (--rest_port) is taken on 127.0.0.1; stop "
        "what uses it or choose another --rest_port"
    )
    assert not list((tmp_path / "cluster").glob("*.pid"))
    assert not [p for p in process_tree([os.getpid()])[1:] if "flink" in cmdline(p)]


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_cluster_pid_files_are_checked(tmp_path):
    """start on a folder whose cluster still runs (in part) refuses, naming what runs; stop
    signals a pid only while it is the process that was started (start time recorded)."""
    folder = tmp_path / "cluster"
    folder.mkdir()
    ours = subprocess.Popen(["sleep", "300"], start_new_session=True)
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        start_time = open(f"/proc/{ours.pid}/stat").read().rsplit(")", 1)[1].split()[19]
        (folder / "taskmanager-1.pid").write_text(f"{ours.pid} {start_time}\n")
        # A recorded pid whose process has since been replaced by another (a new start time).
        (folder / "jobmanager.pid").write_text(f"{other.pid} 1\n")
        flink = FlinkCluster(folder)
        proc = flink.start_command()
        assert proc.returncode == 2, proc.stderr
        assert "still runs (taskmanager-1)" in proc.stderr, proc.stderr
        assert alive(ours.pid) and alive(other.pid)

        subprocess.run([str(CLUSTER), "stop", f"--dir={folder}"], check=True, timeout=60)
        ours.wait(timeout=15)  # stopped: it was ours
        assert alive(other.pid), "stop signalled a pid that is no longer its process"
        assert pid_files(folder) == {}
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()
