"""Faults, each made real: a disk that fills up part-way, a file-size limit, folders made
immutable or read-only while the run writes, an unwritable or closed stderr; models that
return NaN or infinite logits, a dict, or an output width saved_model.pb does not declare;
two runs on one output and date at once (local and gs://), and a run that crashed holding
the lease; undecodable files whose bytes must not reach the error rows. Each ends with every
URI exactly once in the output, or a one-line error with the documented exit status."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import pathlib
import resource
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.images import encode, patch_image, png_bomb
from tests.runs import ROOT, cli, cli_env, obeying_file_modes, read_rows, start_forked
from transforms import vocabulary as v
from transforms.storage.lease import ALL_DATES, Lease, LeaseHeld, Owner, lease_uri

pytestmark = pytest.mark.slow  # real runs of the real command, real mounts and processes

DATE = "2025-06-07"
PROG = "python -m pipeline.run: "


# --- helpers --------------------------------------------------------------------------------


def write_patches(folder: pathlib.Path, n: int, size: int = 32) -> list[str]:
    """n small PNGs with one lit cell each (distinct bytes, so distinct files)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        a = patch_image(size, i % 4, (i // 4) % 4, i % 3)
        a[0, 0, 0] = i % 256  # a different file each
        path = folder / f"p{i:03d}.png"
        path.write_bytes(encode(Image.fromarray(a), "PNG"))
        paths.append(str(path))
    return sorted(paths)


def job(out, model, *extra) -> list[str]:
    return [
        f"--output={out}",
        f"--model={model}",
        "--image_size=32",
        f"--date={DATE}",
        "--quiet",
        *extra,
    ]


def once(out) -> list[str]:
    """Every URI in the date's predictions and errors, sorted, after checking none is twice."""
    uris = [r["uri"] for kind in v.KINDS for r in read_rows(str(out), kind)]
    assert len(uris) == len(set(uris)), "a URI is in the output twice"
    return sorted(uris)


def one_line(stderr: str, status: int, returncode: int) -> str:
    """The one line a fault gives: the documented status, no traceback, nothing else."""
    assert returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(PROG + "error: "), lines[0]
    return lines[0]


def the_same_command_completes(args, out, inputs) -> None:
    """Run again after the fault: exit 0, and every input in the output exactly once."""
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert once(out) == inputs


def lost_rows(stderr: str, returncode: int) -> str:
    """Files written but not renamed into their partition: the summary, then one error line
    (exit status 4) saying how many rows are missing."""
    assert returncode == 4, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.splitlines()
    assert len(lines) == 2, stderr[-3000:]
    assert lines[0].startswith("labelled 0 of ") and "more labelled but not written" in lines[0]
    assert lines[1].startswith(PROG + "error: ") and "not written to their partitions" in lines[1]
    return lines[1]


def start(args, stderr=subprocess.PIPE):
    return start_forked("pipeline.run", args, cli_env(), subprocess.DEVNULL, stderr)


@contextlib.contextmanager
def running(args, **popen):
    """A run of the command in a child process, always ended and reaped."""
    proc = start(args, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.communicate(timeout=60)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended first: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def lease_file(out, scope: str = ALL_DATES) -> pathlib.Path:
    """A lease's file; by default the one a run with the default --skip_existing holds: the
    whole output's (it skips what any date's rows hold)."""
    return pathlib.Path(lease_uri(str(out), scope))


def in_the_way_once_started(proc: subprocess.Popen, out, name: str) -> None:
    """Once the run has started (its lease written: past every start-up check, which would
    refuse it, and before any row), `out/name` is made a file where the run writes a folder;
    the run is held meanwhile."""
    wait_for(lease_file(out).exists, proc)
    proc.send_signal(signal.SIGSTOP)
    try:
        assert not (out / name).exists(), "the run got there first"
        (out / name).write_text(f"a file where the {name} folder belongs")
    finally:
        proc.send_signal(signal.SIGCONT)


def fill(path: pathlib.Path) -> None:
    """Writes zeros to `path` until the file system is full."""
    with open(path, "wb", buffering=0) as f:
        block = b"\0" * (64 << 10)
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    with contextlib.suppress(OSError), open(path, "ab", buffering=0) as f:
        while True:  # the last partial block
            f.write(b"\0")


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs of its own (mounting needs root: skipped otherwise), unmounted after."""
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def chattr(flag: str, path) -> None:
    proc = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"chattr {flag} is not supported here: {proc.stderr.strip()}")


@contextlib.contextmanager
def immutable(path):
    chattr("+i", path)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


# --- 4. write faults: exit 4, one line; the same command then completes exactly once ---------


def test_disk_full_part_way_exits_4_and_the_same_command_then_completes(
    small_fs, probe_model, tmp_path
):
    inputs = write_patches(tmp_path / "images", 40)
    out = small_fs / "out"
    args = [f"--input={tmp_path / 'images'}/*.png", *job(out, probe_model, "--batch_size=2")]
    with running(args) as proc:
        wait_for(lease_file(out).exists, proc)  # started: the lease is written, no row yet
        fill(small_fs / "filler")
        _, stderr = proc.communicate(timeout=120)
    line = one_line(stderr, 4, proc.returncode)
    assert "No space left on device" in line
    assert line.endswith("run the same command again: what is kept is not labelled twice")
    assert not lease_file(out).exists()  # released on the way out

    (small_fs / "filler").unlink()
    the_same_command_completes(args, out, inputs)


def test_file_size_limit_exits_4_and_the_same_command_then_completes(probe_model, tmp_path):
    """EFBIG (RLIMIT_FSIZE: the Parquet file outgrows the limit), not ENOSPC."""
    inputs = write_patches(tmp_path / "images", 40)
    out = tmp_path / "out"
    args = [f"--input={tmp_path / 'images'}/*.png", *job(out, probe_model)]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    proc = cli(*args, preexec_fn=limit)
    line = one_line(proc.stderr, 4, proc.returncode)
    assert "File too large" in line
    the_same_command_completes(args, out, inputs)


def test_immutable_partition_exits_4_and_the_same_command_then_completes(probe_model, tmp_path):
    """The date's predictions folder cannot take the finished files (chattr +i)."""
    inputs = write_patches(tmp_path / "images", 8)
    out = tmp_path / "out"
    partition = out / "predictions" / f"date={DATE}"
    partition.mkdir(parents=True)
    args = [f"--input={tmp_path / 'images'}/*.png", *job(out, probe_model)]
    with immutable(partition):
        proc = cli(*args)
    lost_rows(proc.stderr, proc.returncode)
    the_same_command_completes(args, out, inputs)


def test_temp_folder_made_immutable_part_way_exits_4_then_completes(probe_model, tmp_path):
    """The run's temporary folder turns immutable while its file is being written: the
    finished file cannot leave it."""
    inputs = write_patches(tmp_path / "images", 40)
    out = tmp_path / "out"
    args = [f"--input={tmp_path / 'images'}/*.png", *job(out, probe_model, "--batch_size=2")]
    temp = out / "_temp"
    frozen = []
    try:
        with running(args) as proc:

            def writing() -> bool:
                folders = [p for p in temp.glob("*-predictions") if any(p.iterdir())]
                return bool(folders) and not frozen.extend(folders)

            wait_for(writing, proc)
            chattr("+i", frozen[0])
            _, stderr = proc.communicate(timeout=120)
    finally:
        for folder in frozen:
            subprocess.run(["chattr", "-i", str(folder)], check=False)
    lost_rows(stderr, proc.returncode)
    the_same_command_completes(args, out, inputs)


def test_read_only_partition_for_a_non_root_writer_exits_4_then_completes(probe_model, tmp_path):
    """chmod a-w on the partition, for a process without CAP_DAC_OVERRIDE (root ignores
    modes otherwise): setpriv drops it."""
    obeying_modes = obeying_file_modes()
    inputs = write_patches(tmp_path / "images", 8)
    out = tmp_path / "out"
    partition = out / "predictions" / f"date={DATE}"
    partition.mkdir(parents=True)
    args = [f"--input={tmp_path / 'images'}/*.png", *job(out, probe_model)]
    partition.chmod(0o555)
    try:
        proc = cli(*args, prefix=obeying_modes)
    finally:
        partition.chmod(0o755)
    lost_rows(proc.stderr, proc.returncode)
    the_same_command_completes(args, out, inputs)


@pytest.mark.parametrize("where", ["/dev/full", "closed pipe", "closed"])
def test_unwritable_stderr_does_not_change_the_exit_status(where, probe_model, tmp_path):
    inputs = write_patches(tmp_path / "images", 4)
    out = tmp_path / "out"
    args = [f"--input={tmp_path / 'images'}/*.png", *job(out, probe_model)]
    args.remove("--quiet")  # progress lines too
    popen = {}
    read_end = None
    if where == "/dev/full":
        popen["stderr"] = open("/dev/full", "w")  # noqa: SIM115 - closed below
    elif where == "closed pipe":
        read_end, write_end = os.pipe()
        os.close(read_end)
        popen["stderr"] = write_end
    else:
        popen["stderr"] = subprocess.DEVNULL
        popen["preexec_fn"] = lambda: os.close(2)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.run", *args, "--progress_interval=0.1"],
            cwd=ROOT,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            timeout=300,
            **popen,
        )
    finally:
        stream = popen["stderr"]
        if hasattr(stream, "close"):
            stream.close()
        elif isinstance(stream, int) and stream > 2:
            os.close(stream)
    assert proc.returncode == 0
    assert once(out) == inputs


@pytest.mark.parametrize("case,status", [("too many failed", 3), ("output lost", 4)])
def test_unwritable_stderr_keeps_a_failing_status(case, status, failing_model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "black.png").write_bytes(encode(Image.new("RGB", (32, 32)), "PNG"))
    out = tmp_path / "out"
    args = [f"--input={folder}/*.png", *job(out, failing_model)]
    with open("/dev/full", "w") as full, running(args, stderr=full) as proc:
        if case == "output lost":
            in_the_way_once_started(proc, out, "errors")
        proc.wait(timeout=300)
    assert proc.returncode == status


# --- 5. a broken model never looks like a good run -----------------------------------------


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "logits,labelled",
    [
        ([NAN] * 3, False),  # NaN logits
        ([1.0, INF, 2.0], False),  # one +Inf logit
        ([-INF] * 3, False),  # every class impossible: no distribution
        ([1.0, NAN, 2.0], False),  # one NaN among good logits
        ([-INF, 3.0, -INF], True),  # -Inf is a probability of 0: a good row
        ([1e30, 0.0, -1e30], True),  # huge but finite
    ],
)
def test_non_finite_scores_are_inference_errors(logits, labelled, tmp_path):
    from tests.savedmodels import Constant, save

    model = save(Constant(logits), str(tmp_path / "model"))
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    inputs = write_patches(tmp_path / "images", 3)
    out = tmp_path / "out"
    args = [f"--input={tmp_path / 'images'}/*.png", *job(out, model, f"--labels_file={labels}")]
    proc = cli(*args, "--top_k=3", "--max_error_ratio=1")
    errors = read_rows(str(out), "errors")
    if labelled:
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = read_rows(str(out), "predictions")
        assert all(np.isfinite(r["scores"]).all() for r in rows)
        assert sorted(r["uri"] for r in rows) == inputs and not errors
        return
    # Every image failed: exit 3 whatever --max_error_ratio says.
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    summary, why = proc.stderr.splitlines()
    assert "3 failed (inference: 3 non-finite scores)" in summary
    assert why.startswith(PROG + "error: 3 of 3 images failed (100%)")
    assert not read_rows(str(out), "predictions")
    assert sorted(r["uri"] for r in errors) == inputs
    assert {(r["stage"], r["reason"]) for r in errors} == {(v.INFERENCE, v.NON_FINITE)}
    assert v.NON_FINITE in v.REASONS[v.INFERENCE]


@pytest.mark.parametrize("ratio,status", [("0.5", 0), ("0.2", 3)])
def test_non_finite_scores_count_toward_the_error_ratio(ratio, status, tmp_path):
    """NaN for dark images only: they fail, the bright ones are labelled."""
    from tests.savedmodels import NanWhenDark, save

    model = save(NanWhenDark(), str(tmp_path / "model"))
    folder = tmp_path / "images"
    folder.mkdir()
    dark = [str(folder / f"dark{i}.png") for i in range(3)]
    bright = [str(folder / f"bright{i}.png") for i in range(6)]
    for i, path in enumerate(dark):
        pathlib.Path(path).write_bytes(encode(Image.new("RGB", (32, 32), (i, 0, 0)), "PNG"))
    for i, path in enumerate(bright):
        colour = (200, 100 + i, 50)
        pathlib.Path(path).write_bytes(encode(Image.new("RGB", (32, 32), colour), "PNG"))
    out = tmp_path / "out"
    proc = cli(f"--input={folder}/*.png", *job(out, model, f"--max_error_ratio={ratio}"))
    assert proc.returncode == status, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert sorted(r["uri"] for r in read_rows(str(out), "predictions")) == sorted(bright)
    errors = read_rows(str(out), "errors")
    assert sorted(r["uri"] for r in errors) == sorted(dark)
    assert {r["reason"] for r in errors} == {v.NON_FINITE}


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_a_model_with_structured_output_is_refused_at_start_up(kind, tmp_path):
    from tests.savedmodels import StructuredOutput, save

    model = save(StructuredOutput(kind), str(tmp_path / "model"))
    write_patches(tmp_path / "images", 2)
    out = tmp_path / "out"
    proc = cli(f"--input={tmp_path / 'images'}/*.png", *job(out, model))
    line = one_line(proc.stderr, 2, proc.returncode)
    assert line.startswith(f"{PROG}error: --model {model} returns a {kind} of values, not ")
    assert not out.exists()


@pytest.mark.parametrize(
    "classes,rank,status,says",
    [
        (10, 2, 2, "has 10 outputs but the labels file has 1000 names"),  # on the worker
        (1000, 2, 0, None),
        (1000, 3, 2, "returns a rank-3 tensor"),  # the rank is declared: at start-up
    ],
    ids=["width-10-of-1000-labels", "width-matches", "rank-3"],
)
def test_an_output_shape_saved_model_pb_leaves_open_is_checked_on_the_worker(
    classes, rank, status, says, tmp_path
):
    """saved_model.pb says [None, None] (or [None, None, 2]): what it does not tell, the
    worker finds out when it loads the model, and says in one line."""
    from tests.savedmodels import UndeclaredWidth, save

    model = save(UndeclaredWidth(classes, rank), str(tmp_path / "model"))
    inputs = write_patches(tmp_path / "images", 3)
    out = tmp_path / "out"
    proc = cli(f"--input={tmp_path / 'images'}/*.png", *job(out, model))
    if status == 0:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert once(out) == inputs
        return
    line = one_line(proc.stderr, status, proc.returncode)
    assert line.startswith(f"{PROG}error: --model {model} "), line
    assert says in line, line
    assert once(out) == []  # nothing written: the same command runs again once fixed
    plan = cli(f"--input={tmp_path / 'images'}/*.png", *job(out, model), "--plan")
    planned = one_line(plan.stderr, status, plan.returncode)  # --plan loads it too
    assert planned.startswith(f"{PROG}error: --model {model} ") and says in planned, planned


# --- 6. one run per output and date at a time -----------------------------------------------


def test_a_second_concurrent_run_is_refused_naming_the_first(probe_model, tmp_path):
    inputs = write_patches(tmp_path / "images", 12)
    out = tmp_path / "out"
    args = [f"--input={tmp_path / 'images'}/*.png", *job(out, probe_model)]
    with running(args) as first:
        wait_for(lease_file(out).exists, first)
        first.send_signal(signal.SIGSTOP)  # holds the lease for as long as the test needs
        holder = Owner.from_bytes(lease_file(out).read_bytes())
        second = cli(*args)
        another_date = cli(*args, "--date=2025-06-09")  # it would skip what the first writes
        first.send_signal(signal.SIGCONT)
        _, first_err = first.communicate(timeout=120)
    for refused in (second, another_date):
        line = one_line(refused.stderr, 2, refused.returncode)
        assert f"is being written by run {holder.run_id} (pid {first.pid} on " in line
    assert first.returncode == 0, first_err[-3000:]
    assert once(out) == inputs
    assert not lease_file(out).exists()


def test_a_lease_left_by_a_killed_run_is_taken_over(probe_model, tmp_path):
    inputs = write_patches(tmp_path / "images", 12)
    out = tmp_path / "out"
    args = [f"--input={tmp_path / 'images'}/*.png", *job(out, probe_model)]
    with running(args) as victim:
        wait_for(lease_file(out).exists, victim)
        victim.kill()
        victim.wait()
    assert lease_file(out).exists()
    the_same_command_completes(args, out, inputs)
    assert not lease_file(out).exists()


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_lease_is_released_on_a_signal(sig, status, probe_model, tmp_path):
    write_patches(tmp_path / "images", 12)
    out = tmp_path / "out"
    args = [f"--input={tmp_path / 'images'}/*.png", *job(out, probe_model)]
    with running(args) as proc:
        wait_for(lease_file(out).exists, proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr[-3000:]
    assert not lease_file(out).exists()


def fake_lease(path: pathlib.Path, **fields) -> Owner:
    now = time.time()
    owner = Owner(
        **{
            "run_id": "20250101T000000-abcdef",
            "host": "another-host",
            "pid": 1,
            "pid_start": None,
            "started": now - 3600,
            "heartbeat": now,
            **fields,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(owner.to_bytes())
    return owner


@pytest.mark.parametrize(
    "fields,taken",
    [
        ({"heartbeat": time.time() - 3600}, True),  # another host, no heartbeat for an hour
        ({}, False),  # another host, fresh heartbeat: cannot tell it has gone
        ({"host": socket.gethostname(), "pid": os.getpid(), "pid_start": "1"}, True),  # pid reused
        ({"host": socket.gethostname(), "pid": os.getpid()}, False),  # alive on this host
    ],
    ids=["stale-heartbeat", "fresh-elsewhere", "pid-reused", "alive-here"],
)
def test_a_lease_is_taken_over_only_when_its_owner_has_gone(fields, taken, tmp_path):
    path = lease_file(tmp_path, DATE)
    holder = fake_lease(path, **fields)
    lease = Lease(str(tmp_path), DATE, "20250607T000000-123456")
    if not taken:
        with pytest.raises(LeaseHeld, match=f"is being written by run {holder.run_id}"):
            lease.acquire()
        assert Owner.from_bytes(path.read_bytes()) == holder
        return
    assert Owner.from_bytes(path.read_bytes()) == holder  # until this run takes it over
    lease.acquire()
    assert Owner.from_bytes(path.read_bytes()).run_id == "20250607T000000-123456"
    lease.release()
    assert not path.exists()


def test_an_unreadable_lease_is_refused_until_it_is_old(tmp_path):
    path = lease_file(tmp_path, DATE)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")  # a run that died between creating and writing it
    with pytest.raises(LeaseHeld, match="another run"):
        Lease(str(tmp_path), DATE, "r1").acquire()
    old = time.time() - 3600
    os.utime(path, (old, old))
    Lease(str(tmp_path), DATE, "r1").acquire().release()
    assert not path.exists()


def test_heartbeats_renew_only_a_lease_still_held(tmp_path):
    lease = Lease(str(tmp_path), DATE, "r1").acquire()  # its own beats (30 s) change nothing here
    path = lease_file(tmp_path, DATE)
    first = Owner.from_bytes(path.read_bytes())
    time.sleep(0.01)
    assert lease.renew()
    assert Owner.from_bytes(path.read_bytes()).heartbeat > first.heartbeat
    fake_lease(path, run_id="someone-else")  # taken over while this run was frozen
    assert not lease.renew()
    lease.release()  # leaves the other run's lease alone
    assert Owner.from_bytes(path.read_bytes()).run_id == "someone-else"


class FrozenLease(Lease):
    """A run frozen for an hour, as its lease reads: every heartbeat it writes is an hour old."""

    def _owner(self, started: float | None = None) -> Owner:
        owner = super()._owner(started)
        return dataclasses.replace(owner, heartbeat=owner.heartbeat - 3600)


def test_gcs_lease_is_created_once_and_taken_over_by_generation(gcs, bucket):
    from google.cloud import storage

    root = f"gs://{bucket}/out"
    name = f"out/_temp/lease-{DATE}"

    def holder() -> tuple[str, int] | None:
        """(run id, generation) of the lease object, None if there is none."""
        blob = storage.Client().bucket(bucket).get_blob(name)
        if blob is None:
            return None
        generation = blob.generation  # (a download resets it from a header the emulator omits)
        return json.loads(blob.download_as_bytes())["run_id"], generation

    first = Lease(root, DATE, "r1").acquire()
    with pytest.raises(LeaseHeld, match="is being written by run r1"):
        Lease(root, DATE, "r2").acquire()
    assert first.renew()
    first.release()
    second = FrozenLease(root, DATE, "r2").acquire()  # free again
    second._stop.set()  # and stop: it is abandoned
    run_id, abandoned = holder()
    assert run_id == "r2"
    stale = Lease(root, DATE, "r3").acquire()
    run_id, taken = holder()
    assert run_id == "r3" and taken != abandoned  # taken over: r2's generation replaced
    swap = f"POST /upload/storage/v1/b/{bucket}/o?uploadType=multipart&ifGenerationMatch="
    assert f"{swap}{abandoned} " in "\n".join(gcs.requests())  # only if still r2's
    assert not second.renew()  # its generation is gone
    second.release()  # and so it deletes nothing
    assert holder() == ("r3", taken)
    stale.release()
    assert holder() is None


def test_two_concurrent_runs_on_gcs_one_refused(gcs, bucket, probe_model, tmp_path):
    from google.cloud import storage

    inputs = write_patches(tmp_path / "images", 8)
    out = f"gs://{bucket}/out"
    args = [f"--input={tmp_path / 'images'}/*.png", *job(out, probe_model)]
    blobs = storage.Client().bucket(bucket)
    name = f"out/_temp/lease-{ALL_DATES}"
    with running(args) as first:
        wait_for(lambda: blobs.get_blob(name) is not None, first)
        first.send_signal(signal.SIGSTOP)
        holder = json.loads(blobs.get_blob(name).download_as_bytes())
        second = cli(*args)
        first.send_signal(signal.SIGCONT)
        _, first_err = first.communicate(timeout=120)
    line = one_line(second.stderr, 2, second.returncode)
    assert f"is being written by run {holder['run_id']}" in line
    assert first.returncode == 0, first_err[-3000:]
    assert once(out) == inputs
    assert blobs.get_blob(name) is None


# --- 7. no input content in the output ------------------------------------------------------

MARK = b"ZQXJ"  # bytes no message of ours contains


def hostile_files() -> dict[str, bytes]:
    """Undecodable files whose bytes a decoder might quote: each holds MARK where it would."""
    text = MARK + b" private text, not an image\n"
    png = png_bomb(8, 8)[:-12]  # signature and header, then a chunk named MARK
    png += (5).to_bytes(4, "big") + MARK + b"12345" + b"\0\0\0\0"
    tiff = b"II*\0" + MARK + b"\0" * 60
    gif = b"GIF89a" + MARK + b"\0" * 20
    jpeg = b"\xff\xd8\xff\xe0\0\x10JFIF\0" + MARK * 8  # a JPEG header, then junk
    return {
        "text.jpg": text,
        "chunk.png": png,
        "header.tif": tiff,
        "screen.gif": gif,
        "junk.jpg": jpeg,
        "utf16.jpg": "ZQXJ".encode("utf-16"),
        "latin.jpg": b"\xff\xfe" + MARK + b"\xe9\xe8",
    }


def leaks(text: str) -> bool:
    shown = (MARK.decode(), MARK.hex(), "\\x", "b'", 'b"')
    return any(s.lower() in text.lower() for s in shown)


@pytest.mark.parametrize("name", sorted(hostile_files()))
def test_decode_errors_name_the_kind_never_the_bytes(name):
    from transforms.images import decode_and_resize
    from transforms.rows import failure_row

    data = hostile_files()[name]
    with pytest.raises(Exception) as caught:
        decode_and_resize(data, 32)
    row = failure_row("/x/" + name, v.DECODE, caught.value)
    assert row["reason"] in v.REASONS[v.DECODE]
    assert not leaks(row["error"]), row["error"]


def test_unexpected_decode_exceptions_keep_their_message_out():
    from transforms.rows import failure_row

    try:
        b"\xffZQXJ".decode("utf-8")
    except UnicodeDecodeError as e:
        row = failure_row("/x/a.jpg", v.DECODE, e)
    assert row["error"] == "UnicodeDecodeError"  # its message quotes the byte: 0xff


def test_error_rows_hold_no_bytes_of_the_files(probe_model, failing_model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, data in hostile_files().items():
        (folder / name).write_bytes(data)
    (folder / "black.png").write_bytes(encode(Image.new("RGB", (32, 32)), "PNG"))
    out = tmp_path / "out"
    proc = cli(f"--input={folder}/*", *job(out, failing_model, "--max_error_ratio=1"))
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = read_rows(str(out), "errors")
    assert len(errors) == len(hostile_files()) + 1
    for row in errors:
        assert not leaks(row["error"]), row
    (inference,) = [r for r in errors if r["stage"] == v.INFERENCE]
    # The model's own message stays; the tensor values TensorFlow prints after it do not.
    assert "black image in batch" in inference["error"]
    assert "(Max:0) = ] [0]" not in inference["error"]
