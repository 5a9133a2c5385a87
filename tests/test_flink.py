"""The pipeline on a real Flink cluster (JobManager and TaskManager JVMs on 127.0.0.1, Beam's
Flink job server, an EXTERNAL worker pool) and on Beam's embedded [local] Flink, against
DirectRunner; and a TaskManager SIGKILLed while the job labels."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from PIL import Image

from tests.conftest import SAMPLES_DIR
from tests.flink_cluster import (
    FlinkCluster,
    alive,
    finish,
    job_server_jar,
    listening_addresses,
    process_tree,
    run_flink,
    summary,
)
from tests.images import SAMPLES, bad_files, encode, patch_image
from tests.runs import cli, output_files, read_rows
from tests.savedmodels import probe_class

pytestmark = pytest.mark.slow
DATE = "2025-07-01"
COMMON = ["--image_size=32", f"--date={DATE}", "--max_error_ratio=1", "--quiet"]


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


@pytest.fixture(scope="module")
def jar():
    return job_server_jar()


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


@pytest.fixture(scope="module")
def cluster(jar, tmp_path_factory):
    flink = FlinkCluster(tmp_path_factory.mktemp("cluster"), taskmanagers=1, slots=2).start()
    yield flink
    flink.stop()


def by_uri(rows: list[dict]) -> dict[str, dict]:
    uris = [r["uri"] for r in rows]
    assert len(uris) == len(set(uris)), "a URI was written twice"
    return {r["uri"]: r for r in rows}


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
    out = tmp_path / "out"
    args = [
        f"--flink_master={cluster.master}",
        f"--worker_pool={cluster.worker_pool}",
        f"--input={images['root']}/*",
        f"--output={out}",
        f"--model={probe_model}",
        *COMMON,
    ]
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

    # It ran on the cluster: one finished job there.
    assert [job["state"] for job in cluster.jobs()] == ["FINISHED"]
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


def labelling_vertex(flink: FlinkCluster, job_id: str) -> dict | None:
    for vertex in flink.rest(f"/jobs/{job_id}")["vertices"]:
        if "RunInference" in vertex["name"]:
            return vertex
    return None


def test_taskmanager_killed_while_labelling(jar, probe_model, tmp_path):
    """Two TaskManagers of one slot each; the one running the labelling task is SIGKILLed
    once images have reached that task. Flink restarts the failed region on the other."""
    images = make_images(tmp_path / "images", patches=1500)
    flink = FlinkCluster(tmp_path / "cluster", taskmanagers=2, slots=1).start()
    try:
        out = tmp_path / "out"
        args = [
            f"--flink_master={flink.master}",
            f"--worker_pool={flink.worker_pool}",
            f"--input={images['root']}/*",
            f"--output={out}",
            f"--model={probe_model}",
            *COMMON,
        ]
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
            (subtask,) = detail["subtasks"]
            victim = subtask["taskmanager-id"]
            os.kill(flink.taskmanager_pid(victim), signal.SIGKILL)
            metrics = vertex["metrics"]
            killed = (time.monotonic(), metrics["read-records"], metrics["write-records"])
        assert killed, "the labelling task was never seen running with output" + flink.logs()
        status, err = finish(proc)
        finished = time.monotonic()
        assert not alive(flink.taskmanager_pid(victim))

        job = flink.rest(f"/jobs/{job_id}")
        history = flink.rest(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
        jm_log = (flink.dir / "log" / "jobmanager.log").read_text()
        # Region failover logs "N tasks will be restarted to recover the failed task ...".
        restarts = re.findall(r"(\d+) tasks will be restarted to recover the failed task", jm_log)
        print(
            f"\nTaskManager {victim} killed with the labelling task running ({killed[1]} records "
            f"in, {killed[2]} out); job {job['state']} {finished - killed[0]:.1f} s later; "
            f"run_flink.sh status {status}; {len(history)} failure(s) in Flink's exception "
            f"history: {[e['exceptionName'] for e in history]}; region failovers (tasks "
            f"restarted each): {restarts}"
        )
        assert history, "Flink recorded no failure: the kill did not hit the job"
        if status != 0:  # the job could not recover: the same command again finishes it
            status, err = finish(run_flink(*args))
        assert status == 0, err[-3000:] + flink.logs()
    finally:
        flink.stop()

    # Every URI exactly once, whole files only, each patch with its expected top class.
    predictions = by_uri(read_rows(str(out), "predictions"))
    errors = by_uri(read_rows(str(out), "errors"))
    assert sorted(predictions) == sorted(images["good"])
    assert sorted(errors) == sorted(images["bad"])
    for uri, top in images["expected"].items():
        assert predictions[uri]["class_ids"][0] == top
