"""Bounded reads with real special files and real processes: FIFOs, sockets, a symlink to a
device, sparse files past the size limit, many reads in flight, and what each gs:// object
costs in requests (from the GCS emulator's own log)."""

from __future__ import annotations

import collections
import os
import pathlib
import platform
import socket
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.images import encode
from tests.runs import ROOT, read_rows
from transforms import vocabulary as v
from transforms.storage import bounded, local
from transforms.storage.bounded import MB
from transforms.storage.listing import Listed
from transforms.storage.uris import local_path


def cli_with_peak_rss(*args: str, timeout: int = 180) -> tuple[int, str, int]:
    """python -m pipeline.run ARGS in a child; (exit code, stderr, peak RSS in MiB). The
    child is killed past `timeout` (a hang fails the test instead of stalling it)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.run", *args],
            cwd=ROOT,
            env=env,
            stdout=devnull,
            stderr=subprocess.PIPE,
        )
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        err = proc.stderr.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode != -9, f"the run hung and was killed after {timeout} s:\n{err[-2000:]}"
    return proc.returncode, err, usage.ru_maxrss // 1024


@pytest.fixture
def photos(tmp_path, sample_jpeg) -> list[str]:
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for i in range(6):
        path = folder / f"photo_{i}.jpg"
        path.write_bytes(sample_jpeg)
        paths.append(str(path))
    return paths


@pytest.fixture
def unix_socket(tmp_path):
    """Makes a bound Unix socket file at a path; closed at the end of the test."""
    opened = []

    def make(path: str) -> str:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        opened.append(sock)
        return path

    yield make
    for sock in opened:
        sock.close()


def test_special_files_are_read_errors_and_memory_stays_flat(
    photos, unix_socket, probe_model, tmp_path
):
    """A FIFO nobody writes to, a symlink to /dev/zero, a socket and a 2 GB sparse file in
    the input folder: each one `read` error row with its reason, the run ends, and its peak
    memory stays near that of a run over the good photos alone."""
    folder = os.path.dirname(photos[0])
    args = [f"--model={probe_model}", "--image_size=32", "--max_error_ratio=1"]
    code, err, normal_rss = cli_with_peak_rss(
        f"--input={folder}/*.jpg", f"--output={tmp_path / 'normal'}", *args
    )
    assert code == 0, err[-3000:]

    special = {
        os.path.join(folder, "pipe.jpg"): v.NOT_A_FILE,
        os.path.join(folder, "zero.jpg"): v.NOT_A_FILE,
        os.path.join(folder, "socket.jpg"): v.NOT_A_FILE,
        os.path.join(folder, "huge.jpg"): v.TOO_LARGE,
    }
    os.mkfifo(os.path.join(folder, "pipe.jpg"))
    os.symlink("/dev/zero", os.path.join(folder, "zero.jpg"))
    unix_socket(os.path.join(folder, "socket.jpg"))
    with open(os.path.join(folder, "huge.jpg"), "wb") as f:
        f.truncate(2048 * MB)  # sparse: no disk used
    out = tmp_path / "out"
    code, err, peak_rss = cli_with_peak_rss(f"--input={folder}/*.jpg", f"--output={out}", *args)
    assert code == 0, err[-3000:]

    errors = read_rows(str(out), "errors")
    assert sorted(r["uri"] for r in errors) == sorted(special)  # each exactly once
    assert {r["uri"]: (r["stage"], r["reason"]) for r in errors} == {
        uri: (v.READ, reason) for uri, reason in special.items()
    }
    by_uri = {r["uri"]: r["error"] for r in errors}
    assert "named pipe" in by_uri[os.path.join(folder, "pipe.jpg")]
    assert "character device" in by_uri[os.path.join(folder, "zero.jpg")]
    assert "2,147,483,648 bytes" in by_uri[os.path.join(folder, "huge.jpg")]
    assert sorted(r["uri"] for r in read_rows(str(out), "predictions")) == sorted(photos)
    assert peak_rss < normal_rss + 300, (peak_rss, normal_rss)


def test_the_object_size_limit_is_a_flag(photos, probe_model, tmp_path):
    """--max_object_mb 0.02 refuses the 31 KB photos from their size, not a 1 KB one."""
    folder = os.path.dirname(photos[0])
    small = os.path.join(folder, "small.jpg")
    with open(small, "wb") as f:
        f.write(encode(Image.new("RGB", (32, 32), (200, 10, 10)), "JPEG"))
    assert os.path.getsize(small) < 0.02 * MB
    code, err, _ = cli_with_peak_rss(
        f"--input={folder}/*.jpg",
        f"--output={tmp_path / 'small'}",
        f"--model={probe_model}",
        "--image_size=32",
        "--max_object_mb=0.02",
        "--max_error_ratio=1",
    )
    assert code == 0, err[-3000:]
    errors = read_rows(str(tmp_path / "small"), "errors")
    assert sorted(r["uri"] for r in errors) == sorted(photos)
    assert {(r["stage"], r["reason"]) for r in errors} == {(v.READ, v.TOO_LARGE)}
    assert [r["uri"] for r in read_rows(str(tmp_path / "small"), "predictions")] == [small]


OPENAT = {"x86_64": 257, "aarch64": 56}[platform.machine()]  # the syscall's number


def blocked_in_open(thread: threading.Thread) -> bool:
    """The thread sleeps in openat(2) (the kernel's own view: a woken thread reads
    'running' at once, before it is scheduled)."""
    with open(f"/proc/self/task/{thread.native_id}/syscall") as f:
        return f.read().split()[0] == str(OPENAT)


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    """A writer blocks in open() until some process opens the FIFO for reading: it is still
    blocked right after the read, so the read never opened it."""
    fifo = str(tmp_path / "pipe.jpg")
    os.mkfifo(fifo)
    thread = threading.Thread(target=lambda: os.close(os.open(fifo, os.O_WRONLY)))
    thread.start()
    deadline = time.monotonic() + 10
    while not blocked_in_open(thread) and time.monotonic() < deadline:
        time.sleep(0.001)
    budget = bounded.ByteBudget(MB)
    try:
        assert blocked_in_open(thread), "the writer never reached open()"
        with pytest.raises(v.ImageError) as raised:
            local.read_local(fifo, MB, budget)
        assert blocked_in_open(thread), "the read opened the FIFO"
    finally:
        unblock = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer finish
        thread.join(10)
        os.close(unblock)
    assert raised.value.reason == v.NOT_A_FILE
    assert budget.used == 0


def test_reads_stop_one_byte_past_the_limit_whatever_the_size_said(tmp_path):
    """/dev/zero read as if it were a 10-byte file: the read stops at limit + 1 bytes."""
    asked = []
    with open("/dev/zero", "rb", buffering=0) as f:

        def read(n: int) -> bytes:
            asked.append(n)
            return f.read(n)

        with pytest.raises(v.ImageError) as raised:
            bounded.read_at_most(read, 10, 3 * MB, "/dev/zero")
    assert raised.value.reason == v.TOO_LARGE
    assert sum(asked) == 3 * MB + 1


def test_a_file_that_grows_past_its_stat_size_is_read_whole(tmp_path):
    path = tmp_path / "grew.bin"
    path.write_bytes(b"x" * 5 * MB)
    with open(path, "rb", buffering=0) as f:
        data = bounded.read_at_most(f.read, 100, 10 * MB, str(path))
    assert len(data) == 5 * MB


def test_file_kinds_of_real_special_files(tmp_path, unix_socket):
    os.mkfifo(tmp_path / "fifo")
    unix_socket(str(tmp_path / "sock"))
    (tmp_path / "file").write_bytes(b"1")
    kinds = {
        name: local.file_kind(os.stat(path).st_mode)
        for name, path in {
            "fifo": tmp_path / "fifo",
            "sock": tmp_path / "sock",
            "dir": tmp_path,
            "zero": "/dev/zero",
            "file": tmp_path / "file",
        }.items()
    }
    assert kinds == {
        "fifo": "a named pipe (FIFO)",
        "sock": "a socket",
        "dir": "a folder",
        "zero": "a character device",
        "file": None,
    }
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)


def test_local_path_of_each_scheme():
    assert local_path("/a/b c.jpg") == "/a/b c.jpg"
    assert local_path("file:///a/b%20c.jpg") == "/a/b c.jpg"
    assert local_path("gs://bucket/x.jpg") is None
    assert local_path("s3://bucket/x.jpg") is None
    assert local_path("/odd/name://x.jpg") == "/odd/name://x.jpg"


class PeakBudget(bounded.ByteBudget):
    """A ByteBudget that notes the most it has held (`peak`), for the tests to read: each
    hold is noted by the thread that took it, before that thread can release it."""

    def __init__(self, limit: int):
        super().__init__(limit)
        self.peak = 0

    def acquire(self, n: int) -> None:
        super().acquire(n)
        self.peak = max(self.peak, self.used)

    def resize(self, held: int, n: int) -> None:
        super().resize(held, n)
        self.peak = max(self.peak, self.used)


@pytest.fixture
def peak_budgets(monkeypatch):
    """Feeders made in the test hold PeakBudgets (the Feeder makes its budgets from bounded)."""
    monkeypatch.setattr(bounded, "ByteBudget", PeakBudget)


def test_byte_budget_waits_for_room_and_lets_one_oversized_read_through():
    budget = PeakBudget(100)
    budget.acquire(500)  # larger than the limit, but nothing else is held
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (budget.acquire(10), got.set()))
    waiter.start()
    assert not got.wait(0.2)  # held bytes are over the limit: it waits
    budget.release(500)
    assert got.wait(5)
    waiter.join()
    assert budget.used == 10 and budget.peak == 500


def run_dofn(fn, uris: list[str]) -> list[tuple]:
    """Drives a ReadAndDecode through one bundle as Beam does; (tag, uri, value) outputs."""
    from apache_beam.pvalue import TaggedOutput
    from apache_beam.utils.windowed_value import WindowedValue

    fn.setup()
    try:
        fn.start_bundle()
        outs = [out for uri in uris for out in fn.process((Listed(uri),))]
        outs += list(fn.finish_bundle())
    finally:
        fn.teardown()
    seen = []
    for out in outs:
        tag = out.tag if isinstance(out, TaggedOutput) else None
        value = out.value if isinstance(out, TaggedOutput) else out
        value = value.value if isinstance(value, WindowedValue) else value
        seen.append((tag, value["uri"], value) if tag else (tag, value[0][0].uri, value[1]))
    return seen


def test_many_reads_in_flight_give_every_uri_exactly_once(tmp_path, sample_jpeg, peak_budgets):
    """200 reads, 16 at a time, a budget of 100 KB (about 3 photos): every URI comes out once,
    errors routed, and the bytes held never pass the budget by more than one photo."""
    from transforms.feed import ReadAndDecode, acquire_feeder

    uris = []
    for i in range(200):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(b"" if i % 50 == 3 else sample_jpeg)
        uris.append(str(path))
    missing = str(tmp_path / "missing.jpg")
    uris.append(missing)
    settings = (16, 100_000, 10 * MB)
    feeder = acquire_feeder(*settings)  # held here too, to read its budget afterwards
    assert isinstance(feeder.budget, PeakBudget)
    seen = run_dofn(ReadAndDecode(16, *settings), uris)
    assert feeder.budget.used == 0
    assert feeder.budget.peak <= 100_000 + len(sample_jpeg)
    assert sorted(uri for _, uri, _ in seen) == sorted(uris)
    errors = {uri: (value["stage"], value["reason"]) for tag, uri, value in seen if tag}
    empty = {uri: (v.DECODE, v.EMPTY) for i, uri in enumerate(uris[:-1]) if i % 50 == 3}
    assert errors == {**empty, missing: (v.READ, v.NOT_FOUND)}
    images = [value for tag, _, value in seen if not tag]
    assert all(image.shape == (16, 16, 3) and image.dtype == np.uint8 for image in images)


def test_dofn_copies_share_one_feeder_per_process_and_its_threads_end_with_it():
    import gc
    import pickle

    from transforms.feed import ReadAndDecode

    dofn = ReadAndDecode(8, 4, MB, MB)
    a, b = pickle.loads(pickle.dumps(dofn)), pickle.loads(pickle.dumps(dofn))  # as Beam copies
    a.setup()
    b.setup()
    assert a._feeder is b._feeder
    feeder_threads = [t for t in threading.enumerate() if t.name.startswith(("read_", "decode_"))]
    assert feeder_threads
    a.teardown()
    b.teardown()
    dofn = ReadAndDecode(8, 5, MB, MB)  # another Feeder acquired: the old one is let go
    dofn.setup()
    dofn.teardown()
    del dofn
    gc.collect()
    for thread in feeder_threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in feeder_threads)


def noise_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A JPEG that compresses badly (random pixels): large bytes for its size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=95)


def requests_per_object(log: list[str], bucket: str) -> dict[str, collections.Counter]:
    """object name -> Counter of 'media' and 'metadata' requests seen in the emulator log."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in log:
        path = line.split(" ")[1] if " " in line else ""
        for kind, prefix in (
            ("media", f"/download/storage/v1/b/{bucket}/o/"),
            ("metadata", f"/storage/v1/b/{bucket}/o/"),
        ):
            if path.startswith(prefix):
                name = path[len(prefix) :].split("?")[0]
                counts[name.replace("%2F", "/")][kind] += 1
                break
    return counts


def test_gcs_costs_one_request_per_object(gcs, bucket, probe_model, tmp_path, sample_jpeg):
    """One media request per object and no metadata request: for photos, for an object
    larger than a read whose size is unknown would hold (1 MiB here), and for one above
    --max_object_mb, refused from the size its reply announces, its body unread."""
    from google.cloud import storage

    target = storage.Client().bucket(bucket)
    photos = [f"in/photo_{i}.jpg" for i in range(8)]
    for i, name in enumerate(photos):  # each its own content: identical ones are read once
        target.blob(name).upload_from_string(noise_jpeg(64, 48, seed=10 + i))
    large = noise_jpeg(1600, 1200)  # more than the first request asks for (1 MiB)
    assert 1.2 * MB < len(large) < 3 * MB, len(large)
    target.blob("in/large.jpg").upload_from_string(large)
    too_large = noise_jpeg(2000, 1500, seed=1)
    assert len(too_large) > 3 * MB, len(too_large)
    target.blob("in/too_large.jpg").upload_from_string(too_large)
    seen_before = len(gcs.requests())
    out = tmp_path / "out"
    code, err, _ = cli_with_peak_rss(
        f"--input=gs://{bucket}/in/*.jpg",
        f"--output={out}",
        f"--model={probe_model}",
        "--image_size=32",
        "--max_inflight_mb=8",  # a read of unknown size would hold 1 MiB
        "--max_object_mb=3",
        "--max_error_ratio=1",
    )
    assert code == 0, err[-3000:]
    predicted = sorted(r["uri"] for r in read_rows(str(out), "predictions"))
    assert predicted == sorted(f"gs://{bucket}/{n}" for n in [*photos, "in/large.jpg"])
    errors = read_rows(str(out), "errors")
    assert [(r["uri"], r["reason"]) for r in errors] == [
        (f"gs://{bucket}/in/too_large.jpg", v.TOO_LARGE)
    ]

    counts = requests_per_object(gcs.requests()[seen_before:], bucket)
    for name in photos:
        assert counts[name] == {"media": 1}, (name, counts[name])
    assert counts["in/large.jpg"] == {"media": 1}
    assert counts["in/too_large.jpg"] == {"media": 1}


def test_workers_run_every_call_and_refuse_after_shutdown():
    import queue as queue_module

    from transforms.feed import Workers

    workers = Workers(3, "test")
    done: queue_module.SimpleQueue = queue_module.SimpleQueue()
    for i in range(50):
        workers.submit(done.put, i)
    workers.submit(lambda: 1 / 0)  # a raising call kills no worker
    for i in range(50, 60):
        workers.submit(done.put, i)
    assert sorted(done.get(timeout=10) for _ in range(60)) == list(range(60))
    workers.shutdown()
    with pytest.raises(RuntimeError):
        workers.submit(done.put, 0)


# --- Memory by decoded pixels, not only by bytes read -------------------------------------


def sixteen_bit_png(path, side: int, value: int = 40000) -> None:
    """A gray 16-bit PNG: a few hundred KB of file, side x side x 2 bytes decoded."""
    pixels = np.full((side, side), value, np.uint16)
    Image.fromarray(pixels).save(path, format="PNG")


def test_sixteen_to_eight_matches_rounding_of_the_full_range():
    from transforms.images import ROWS_AT_ONCE, sixteen_to_eight

    rng = np.random.default_rng(3)
    wide = rng.integers(-5000, 80000, (2 * ROWS_AT_ONCE + 7, 13)).astype(np.int32)
    wide[0, :4] = [0, 65535, 128, 129]
    oracle = np.round(np.clip(wide.astype(np.float64), 0, 65535) / 257.0)  # the plain formula
    got = sixteen_to_eight(wide)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, oracle.astype(np.uint8))


def test_decoded_bytes_counts_frames_not_files(tmp_path):
    from transforms.images import decoded_bytes, open_image

    sixteen_bit_png(tmp_path / "wide.png", 2000)
    data = (tmp_path / "wide.png").read_bytes()
    assert len(data) < 100_000  # the file is small
    assert decoded_bytes(open_image(data), 32) >= 2000 * 2000 * 6  # the 16-bit frame + RGB


def test_huge_frames_are_decoded_one_at_a_time(tmp_path, peak_budgets, monkeypatch):
    """Four 16-bit PNGs whose frames (22 MB each as counted) do not fit two at a time in a
    30 MB budget: the pixel budget never holds two, and every image is decoded. Two decode
    threads whatever the machine (one per usable core), so two frames could be made at once."""
    from transforms import feed
    from transforms.feed import ReadAndDecode, acquire_feeder

    monkeypatch.setattr(feed, "usable_cores", lambda: 2)
    from transforms.images import decoded_bytes, open_image

    uris = []
    for i in range(4):
        path = tmp_path / f"wide_{i}.png"
        sixteen_bit_png(path, 1900, value=1000 * (i + 1))
        uris.append(str(path))
    cost = decoded_bytes(open_image(pathlib.Path(uris[0]).read_bytes()), 16)
    limit = 30 * MB
    assert limit < 2 * cost, (cost, limit)
    settings = (4, limit, 10 * MB)
    feeder = acquire_feeder(*settings)
    assert feeder.decode_threads == 2 and isinstance(feeder.pixels, PeakBudget)
    seen = run_dofn(ReadAndDecode(16, *settings), uris)
    assert sorted(uri for _, uri, _ in seen) == sorted(uris)
    assert all(tag is None for tag, _, _ in seen), seen
    assert feeder.pixels.peak == cost  # never two frames at once
    assert feeder.pixels.used == 0


@pytest.mark.slow
def test_sixteen_bit_giants_stay_within_a_bound_of_a_normal_run(photos, probe_model, tmp_path):
    """Two 16-bit PNGs of 9400x9400 (a few hundred KB of files, under the pixel and byte
    limits): labelled, and the run's peak memory within 1.5 GB of a run over the photos."""
    folder = os.path.dirname(photos[0])
    args = [f"--model={probe_model}", "--image_size=32"]
    code, err, normal_rss = cli_with_peak_rss(
        f"--input={folder}/*", f"--output={tmp_path / 'normal'}", *args
    )
    assert code == 0, err[-3000:]
    for i in range(2):
        sixteen_bit_png(os.path.join(folder, f"giant_{i}.png"), 9400, value=30000 + i)
    out = tmp_path / "out"
    code, err, peak_rss = cli_with_peak_rss(
        f"--input={folder}/*", f"--output={out}", *args, timeout=600
    )
    assert code == 0, err[-3000:]
    labelled = {pathlib.Path(r["uri"]).name for r in read_rows(str(out), "predictions")}
    assert {"giant_0.png", "giant_1.png"} <= labelled
    assert peak_rss < normal_rss + 1536, (peak_rss, normal_rss)
