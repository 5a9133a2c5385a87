"""A long run keeps its work: 3,000 photos labelled in small portions, stopped at about 75% by
SIGKILL, Ctrl-C or SIGTERM, keep every committed portion; the same command then labels only
the rest, each URI exactly once; a crash inside a portion's commit leaves whole files only."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from tests.gcs_proxy import Gate
from tests.images import encode, quadrants
from tests.runs import (
    cli,
    cli_env,
    output_files,
    read_rows,
    start_forked,
    storage_through_gate,
)

pytestmark = pytest.mark.slow
PHOTOS = 3000
DATE = "2026-02-03"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    """3,000 names, hard links to one small JPEG: reads and decodes as cheap as they come."""
    root = tmp_path_factory.mktemp("photos")
    first = root / "p00000.jpg"
    first.write_bytes(encode(Image.fromarray(quadrants()), "JPEG", quality=90))
    for i in range(1, PHOTOS):
        (root / f"p{i:05d}.jpg").hardlink_to(first)
    return str(root)


def args_for(photos: str, out: str, model: str) -> list[str]:
    return [
        f"--input={photos}/*.jpg",
        f"--output={out}",
        f"--model={model}",
        "--image_size=32",
        f"--date={DATE}",
        # Small portions: several commits a second, so that at 75% committed the rest is more
        # than the portion in flight, however fast the machine (at 1 s, a fast one made the
        # last quarter one portion, and a stop kept it all).
        "--portion_seconds=0.25",
        "--quiet",
    ]


def committed(out: str, kind: str = "predictions") -> int:
    """Rows in the partition's finished files, from their footers."""
    total = 0
    for path in output_files(out, kind):
        with FileSystems.open(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def start(args: list[str], env: dict | None = None):
    return start_forked("pipeline.run", args, cli_env() | (env or {}), subprocess.DEVNULL)


def stop_at(out: str, share: float, proc: subprocess.Popen, sig: int) -> float:
    """Sends `sig` once the partition holds `share` of the photos as committed rows; returns
    when it was sent. Fails if the run ends first."""
    deadline = time.monotonic() + 300
    while committed(out) < share * PHOTOS:
        assert proc.poll() is None, f"the run ended before {share:.0%}:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline, "the run never reached the point"
        time.sleep(0.05)
    proc.send_signal(sig)
    return time.monotonic()


def resumed_exactly_once(args: list[str], out: str, kept: int, env: dict | None = None):
    """The same command again labels exactly what was not kept; each URI is then in the
    output once."""
    proc = cli(*args, env=env or {})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"labelled {PHOTOS - kept:,} of {PHOTOS - kept:,} images" in proc.stderr, proc.stderr
    assert f"{kept:,} already in the output" in proc.stderr or kept == 0
    uris = [r["uri"] for r in read_rows(out, "predictions") + read_rows(out, "errors")]
    assert len(uris) == len(set(uris)) == PHOTOS


def test_sigkill_at_75_percent_keeps_the_committed_portions(photos, probe_model, tmp_path):
    out = str(tmp_path / "out")
    args = args_for(photos, out, probe_model)
    proc = start(args)
    try:
        stop_at(out, 0.75, proc, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.stderr.close()
    kept = committed(out)
    assert PHOTOS * 0.75 <= kept < PHOTOS  # committed portions stay, whole and readable
    assert committed(out, "errors") == 0
    resumed_exactly_once(args, out, kept)


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_commits_what_is_finished_and_says_so(photos, probe_model, tmp_path, sig, status):
    out = str(tmp_path / "out")
    args = args_for(photos, out, probe_model)
    proc = start(args)
    try:
        sent = stop_at(out, 0.75, proc, sig)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert took <= 30, f"{took:.1f} s from the signal to the exit"
    kept = committed(out)
    assert PHOTOS * 0.75 <= kept < PHOTOS
    assert f"stopped; {kept:,} predictions and 0 error rows of this run are kept" in err, err
    assert "Traceback" not in err
    resumed_exactly_once(args, out, kept)


def test_a_second_ctrl_c_stops_at_once(photos, probe_model, tmp_path):
    """After the first portion, the rest is one portion (--portion_seconds 3600); a second
    Ctrl-C gives it up: exit 130 at once, the first portion kept (resuming is tested above)."""
    out = str(tmp_path / "out")
    args = [*args_for(photos, out, probe_model)[:-1], "--portion_seconds=3600"]
    proc = start([*args, "--progress_interval=0.1"])  # not --quiet: progress lines on a pipe
    try:
        for line in proc.stderr:  # the second portion is in flight: past the first's 64
            found = re.match(r"labelling: ([\d,]+) of", line)
            if found and int(found[1].replace(",", "")) > 64:
                break
        else:
            raise AssertionError("the run ended before its second portion")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert took < 15, f"{took:.1f} s after the second Ctrl-C"
    assert "stopping after the portion in flight" in err
    assert f"stopped; {committed(out):,} predictions" in err
    assert committed(out) < PHOTOS


def test_a_crash_inside_a_commit_leaves_whole_files(gcs, bucket, probe_model, photos):
    """gs:// output: SIGKILL while the third portion's predictions file is being copied into
    its partition (the commit; the proxy holds the copy). Every file in the partitions is
    whole, and the same command completes the set once."""
    out = f"gs://{bucket}/crash-in-commit"
    some = sorted(m.path for m in FileSystems.match([f"{photos}/*.jpg"])[0].metadata_list)[:300]
    manifest = f"{photos}-manifest.txt"
    with open(manifest, "w") as f:
        f.write("".join(path + "\n" for path in some))
    args = [*args_for(photos, out, probe_model)]
    args[0] = f"--input_manifest={manifest}"
    gate = Gate(3, "/predictions/date=", copy=True)
    with storage_through_gate(gcs.port, gate) as env:
        proc = start(args, env)
        try:
            assert gate.holding.wait(120), "no third commit was reached"
            proc.kill()
            proc.wait(timeout=60)
        finally:
            gate.release()
            proc.kill()
            proc.stderr.close()
        kept = committed(out) + committed(out, "errors")
        assert 0 < kept < len(some)
        for kind in ("predictions", "errors"):
            for path in output_files(out, kind):  # each one whole: its footer reads
                with FileSystems.open(path) as f:
                    pq.ParquetFile(f).metadata  # noqa: B018 - raises if it is not whole
        proc = cli(*args, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        uris = [r["uri"] for r in read_rows(out, "predictions") + read_rows(out, "errors")]
        assert sorted(uris) == some
