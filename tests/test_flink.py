"""The pipeline on a real Flink cluster (JobManager and TaskManager JVMs on 127.0.0.1, Beam's
Flink job server, each TaskManager starting its own SDK workers) at --parallelism 2, through
the job server and as one uber jar, and on Beam's embedded [local] Flink, against
DirectRunner; SIGTERM cancelling the Flink job through REST; a cluster that is not there or
too small. (Runs that lose work: tests/test_flink_recovery.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from tests.flink_cluster import (
    COMMON,
    by_uri,
    cancel_a_held_job,
    cluster_args,
    finish,
    listening_addresses,
    make_images,
    process_tree,
    run_flink,
    summary,
)
from tests.gcs_servers import free_port
from tests.runs import cli, output_files, read_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    return make_images(tmp_path_factory.mktemp("flink") / "images", patches=24)  # 18+24+5


@pytest.fixture(scope="module")
def reference(images, probe_model, tmp_path_factory) -> dict:
    """The same images labelled on DirectRunner, and how long the command took."""
    out = tmp_path_factory.mktemp("direct") / "out"
    started = time.monotonic()
    proc = cli(f"--input={images['root']}/*", f"--output={out}", f"--model={probe_model}", *COMMON)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": str(out), "summary": summary(proc.stderr), "seconds": seconds}


def assert_same_output(out: str, reference_out: str) -> None:
    """Predictions equal (uri, class ids, scores to 1e-5); errors equal (uri, stage, reason)."""
    got, want = (by_uri(read_rows(o, "predictions")) for o in (out, reference_out))
    assert sorted(got) == sorted(want)
    for uri, row in got.items():
        assert row["class_ids"] == want[uri]["class_ids"], uri
        assert row["scores"] == pytest.approx(want[uri]["scores"], abs=1e-5), uri
    got, want = (by_uri(read_rows(o, "errors")) for o in (out, reference_out))
    assert {u: (r["stage"], r["reason"]) for u, r in got.items()} == {
        u: (r["stage"], r["reason"]) for u, r in want.items()
    }


def test_real_cluster_labels_as_direct_runner_does(
    cluster, images, reference, probe_model, tmp_path
):
    """The default cluster's shape (one TaskManager, 2 slots) at --parallelism 2."""
    out = tmp_path / "out"
    args = cluster_args(cluster, images, out, probe_model)
    started = time.monotonic()
    proc = run_flink(*args)
    # Every server of the run listens on loopback only: Flink's, the job server's and the
    # Fn API servers the TaskManager opens for the Python workers.
    addresses = set()
    while proc.poll() is None:
        addresses |= listening_addresses(process_tree([*cluster.pids.values(), proc.pid]))
        time.sleep(0.5)
    status, err = finish(proc)
    seconds = time.monotonic() - started
    assert status == 0, err[-3000:] + cluster.logs()
    assert addresses == {"127.0.0.1"}, addresses

    # It ran on the cluster: one finished job there, at parallelism 2, with no task failure.
    (job,) = cluster.jobs()
    assert job["state"] == "FINISHED"
    assert {v["parallelism"] for v in cluster.rest(f"/jobs/{job['jid']}")["vertices"]} == {2}
    assert not cluster.rest(f"/jobs/{job['jid']}/exceptions")["exceptionHistory"]["entries"]
    assert f"Flink job {job['jid']} is " in err  # the id and web UI link at the start
    assert f"Flink job {job['jid']} FINISHED; 0 restarts" in err
    assert_same_output(str(out), reference["out"])
    predictions = by_uri(read_rows(str(out), "predictions"))
    for uri, top in images["expected"].items():
        assert predictions[uri]["class_ids"][0] == top
    # The summary's counts come from the Flink job's metrics (images read, failures by
    # reason) and match what DirectRunner's metrics said.
    counts = summary(err)
    total = len(images["good"]) + len(images["bad"])
    assert counts == reference["summary"]
    assert (counts["labelled"], counts["read"], counts["failed"]) == (
        len(images["good"]),
        total,
        len(images["bad"]),
    )
    print(
        f"\n{total} images: DirectRunner {reference['seconds']:.1f} s, "
        f"Flink cluster {seconds:.1f} s (run_flink.sh, whole command)"
    )

    # Again on the same date: nothing is labelled, no file is written.
    files = output_files(str(out), "predictions") + output_files(str(out), "errors")
    status, err = finish(run_flink(*args))
    assert status == 0, err[-3000:]
    again = summary(err)
    assert (again["labelled"], again["failed"], again["skipped"]) == (0, 0, total)
    assert output_files(str(out), "predictions") + output_files(str(out), "errors") == files


def test_embedded_local_flink_labels_as_direct_runner_does(
    jar, images, reference, probe_model, tmp_path
):
    out = tmp_path / "out"
    started = time.monotonic()
    status, err = finish(
        run_flink(
            "--flink_master=[local]",
            f"--input={images['root']}/*",
            f"--output={out}",
            f"--model={probe_model}",
            *COMMON,
        )
    )
    assert status == 0, err[-3000:]
    assert_same_output(str(out), reference["out"])
    assert summary(err) == reference["summary"]
    print(f"\n[local] Flink {time.monotonic() - started:.1f} s (run_flink.sh, whole command)")


def test_sigterm_with_a_running_job_server_cancels_through_rest(
    cluster, jar, images, probe_model, tmp_path
):
    """--job_endpoint (a job server already running) with the cluster's --flink_master: SIGTERM
    to run_flink.sh alone cancels the Flink job through the REST API (Beam's job server
    would cancel only its own invocation and leave the Flink job running)."""
    port = free_port()
    server = subprocess.Popen(
        ["java", "-Xmx512m", "-Dbeam.fn.bind_address=127.0.0.1", "-jar", jar]
        + ["--flink-master", cluster.master, "--job-host=127.0.0.1", f"--job-port={port}"]
        + ["--artifact-port=0", "--expansion-port=-1", f"--artifacts-dir={tmp_path}/artifacts"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no job server"
                time.sleep(0.5)
        args = cluster_args(cluster, images, tmp_path / "out", probe_model)
        before = {j["jid"] for j in cluster.jobs()}
        proc = run_flink(f"--job_endpoint=127.0.0.1:{port}", *args)
        job_id, status, err = cancel_a_held_job(
            cluster, proc, lambda: os.kill(proc.pid, signal.SIGTERM), before
        )
        assert status == 143, err[-3000:]
        assert cluster.rest(f"/jobs/{job_id}")["state"] == "CANCELED"
        assert f"run_flink.sh: cancelled Flink job {job_id} (CANCELED)" in err
    finally:
        server.kill()
        server.wait()


def test_uber_jar_submission(cluster, images, reference, probe_model, tmp_path):
    """--flink_submit_uber_jar: no job server here; Beam uploads the self-contained job
    server jar with the pipeline in it to the cluster, which runs it. The output is given
    relative to the folder the command runs in, which is not the repository."""
    out = tmp_path / "out"
    args = cluster_args(cluster, images, "out", probe_model)
    proc = run_flink(*args, "--flink_submit_uber_jar", cwd=tmp_path)
    status, err = finish(proc)
    assert status == 0, err[-3000:] + cluster.logs()
    assert_same_output(str(out), reference["out"])
    assert "FINISHED; 0 restarts" in err


def test_unreachable_cluster_or_too_few_slots_is_one_line(cluster, tmp_path):
    base = ["--worker_command=/bin/true", f"--input={tmp_path}/*", f"--output={tmp_path}/o"]
    dead = f"127.0.0.1:{free_port()}"
    for args, says in [
        ([f"--job_endpoint={dead}"], f"no Beam job server answers at {dead}"),
        ([f"--flink_master={dead}"], f"no Flink cluster answers at {dead}"),
        ([f"--flink_master={cluster.master}", "--parallelism=3"], "has 2"),
    ]:
        status, err = finish(run_flink(*args, *base), timeout=60)
        assert status == 2, err
        assert err.strip().splitlines() == [err.strip()] and says in err, err
