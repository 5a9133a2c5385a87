"""Flink runs that lose work and get it back: a TaskManager SIGKILLed while the job labels,
Ctrl-C on a run in portions (each a Flink job) cancelling the one in flight and keeping the
committed ones; and the cluster
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
    cancel_a_held_job,
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
    new TaskManager: a region of this batch job needs both slots at once.) One job
    (--portion_seconds=0): a portion's job recovers as any job does."""
    images = make_images(tmp_path / "images", patches=1500)
    flink = FlinkCluster(tmp_path / "cluster", taskmanagers=2, slots=2).start()
    try:
        out = tmp_path / "out"
        args = [*cluster_args(flink, images, out, probe_model), "--portion_seconds=0"]
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


def test_ctrl_c_cancels_the_job_in_flight_and_keeps_the_committed_portions(
    cluster, probe_model, tmp_path
):
    """A run in portions (each a Flink job, at --parallelism 2). Once the first portion is
    committed, the second job is held running (its SDK workers stopped, so it cannot finish
    first) and the whole process group gets SIGINT, as Ctrl-C on a terminal sends: the Flink
    job ends CANCELED before run_flink.sh exits 130 saying what is kept (the first portion,
    no more); the same command labels only the rest, each URI once, each patch as expected."""
    images = make_images(tmp_path / "images", patches=110)  # 133 inputs: portions of 64 and 69
    out = tmp_path / "out"
    args = [*cluster_args(cluster, images, out, probe_model), "--portion_seconds=1"]
    before = {j["jid"] for j in cluster.jobs()}
    proc = run_flink(*args)
    first_job_workers: set[int] = set()  # seen before the first commit: none is the second's
    deadline = time.monotonic() + 300
    while True:
        workers = cluster.sdk_workers()
        if read_rows(str(out), "predictions") + read_rows(str(out), "errors"):
            break
        first_job_workers.update(workers)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first portion was never committed"
        time.sleep(0.2)
    (first,) = [j["jid"] for j in cluster.jobs() if j["jid"] not in before]
    job_id, status, err = cancel_a_held_job(
        cluster,
        proc,
        lambda: os.killpg(proc.pid, signal.SIGINT),
        before | {first},
        ignore=frozenset(first_job_workers),
    )
    assert status == 130, err[-3000:]
    assert cluster.rest(f"/jobs/{job_id}")["state"] == "CANCELED"
    assert cluster.rest(f"/jobs/{first}")["state"] == "FINISHED"
    assert f"run_flink.sh: cancelled Flink job {job_id} (CANCELED)" in err, err[-3000:]
    predictions, errors = (read_rows(str(out), kind) for kind in ("predictions", "errors"))
    assert len(predictions) + len(errors) == 64  # the first portion, whole
    assert f"stopped; {len(predictions):,} predictions and {len(errors):,} error rows" in err
    assert "Traceback" not in err, err[-3000:]

    status, err = finish(run_flink(*args))
    assert status == 0, err[-3000:]
    assert summary(err)["skipped"] == 64
    predictions = by_uri(read_rows(str(out), "predictions"))
    errors = by_uri(read_rows(str(out), "errors"))
    assert sorted(predictions) == sorted(images["good"])
    assert sorted(errors) == sorted(images["bad"])
    assert len(read_rows(str(out), "predictions")) == len(predictions)  # each URI once
    for uri, top in images["expected"].items():
        assert predictions[uri]["class_ids"][0] == top


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
