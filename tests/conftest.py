"""Shared fixtures: test SavedModels built once per session, sample photos, image folders,
and the loopback Google endpoints (metadata server, GCS emulator) for gs:// tests."""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import tempfile
import uuid

import pytest

from tests.gcs_servers import Emulator, MetadataServer, free_port, metadata_env
from tests.images import SAMPLES_DIR

ROOT = pathlib.Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# google-auth reads these when it is imported, so they are set before any test module loads;
# child processes (the CLI, workers) inherit them. No developer credentials leak in. (pytest
# imports this file as `conftest`: a test module importing `tests.conftest` would run it a
# second time and point the environment at another port, so shared names live elsewhere.)
METADATA_PORT = free_port()
os.environ.update(metadata_env(METADATA_PORT))
os.environ["CLOUDSDK_CONFIG"] = os.path.join(tempfile.gettempdir(), "image-labeler-no-gcloud")
os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)

# A suite started in the background by a shell without job control (`(.ci/run &)`) inherits
# SIGINT ignored, and so would every command a test starts: bash cannot trap a signal ignored
# on entry, so run_flink.sh would never see the Ctrl-C the tests send. Python's usual handler
# puts it back (a handler, unlike SIG_IGN, is reset to the default in a child at exec).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# A test that needs one of these servers is slow, wherever it is.
SERVER_FIXTURES = {"gcs", "bucket", "metadata_server"}


# The files that take longest, longest first (docs/testing.md, the slowest tests): run_tests.sh
# hands files to its two workers in this order, so that the last file to start is a short one
# and the workers end together.
LONGEST_FIRST = (
    "test_flink.py",
    "test_flink_recovery.py",
    "test_faults.py",
    "test_incremental.py",
    "test_portions_runs.py",
    "test_airflow.py",
    "test_exit_status.py",
    "test_output_paths.py",
    "test_retries.py",
    "test_reads.py",
    "test_manifests.py",
    "test_gcs.py",
    "test_reruns.py",
)


def pytest_sessionfinish(session):
    """Ends the worker's CLI fork server (tests/runs.py), if a test started it."""
    runs = sys.modules.get("tests.runs")
    if runs is not None:
        runs.stop_fork_server()


def pytest_collection_modifyitems(items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and among the rest, the order is pytest's


@pytest.fixture(scope="session")
def metadata_server():
    server = MetadataServer(METADATA_PORT).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs(tmp_path_factory, metadata_server) -> Emulator:
    """One GCS emulator for the session; STORAGE_EMULATOR_HOST points every client at it.
    Its injected faults touch only objects named *flaky* or *forbidden*."""
    emulator = Emulator(str(tmp_path_factory.mktemp("gcs")), faults=True).start()
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.endpoint
    yield emulator
    emulator.stop()
    del os.environ["STORAGE_EMULATOR_HOST"]


@pytest.fixture
def bucket(gcs) -> str:
    """A new, empty bucket on the emulator; its name."""
    from google.cloud import storage

    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.Client().create_bucket(name)
    return name


@pytest.fixture(scope="session")
def sample_jpeg() -> bytes:
    return (SAMPLES_DIR / "cat.jpg").read_bytes()


@pytest.fixture(scope="session")
def probe_model(tmp_path_factory) -> str:
    from tests.savedmodels import GridProbe, save

    return save(GridProbe(), str(tmp_path_factory.mktemp("models") / "probe"))


@pytest.fixture(scope="session")
def failing_model(tmp_path_factory) -> str:
    from tests.savedmodels import Failing, save

    return save(Failing(), str(tmp_path_factory.mktemp("models") / "failing"))


@pytest.fixture(scope="session")
def probe_labels(tmp_path_factory) -> str:
    """Names for the GridProbe's classes: 'r{row}c{col}-{channel}', then 'other-N'."""
    from tests.savedmodels import GRID, probe_class

    names = [f"other-{i}" for i in range(1000)]
    for row in range(GRID):
        for col in range(GRID):
            for channel, name in enumerate("RGB"):
                names[probe_class(row, col, channel)] = f"r{row}c{col}-{name}"
    path = tmp_path_factory.mktemp("labels") / "probe_labels.txt"
    path.write_text("\n".join(names) + "\n")
    return str(path)


@pytest.fixture
def image_dir(tmp_path, sample_jpeg) -> dict:
    """A folder of good photos (some nested), lit-patch images and every kind of bad file.

    Returns {"root": path, "good": [uris], "patches": {uri: (row, col, channel)},
    "bad": {uri: reason}}.
    """
    from PIL import Image

    from tests.images import BAD_REASONS, SAMPLES, bad_files, encode, patch_image

    root = tmp_path / "images"
    (root / "nested" / "deeper").mkdir(parents=True)
    good, patches, bad = [], {}, {}
    for i, name in enumerate(SAMPLES):
        photo = Image.open(SAMPLES_DIR / f"{name}.jpg")
        crops = [(0, 0, 200, 150), (100, 50, 400, 300), (50, 20, 250, 290), None]
        folders = [root, root / "nested", root / "nested", root / "nested" / "deeper"]
        for j, (box, folder) in enumerate(zip(crops, folders, strict=True)):
            path = folder / f"{name}_{j}.jpg"
            path.write_bytes(encode(photo.crop(box) if box else photo, "JPEG", quality=90))
            good.append(str(path))
        row, col, channel = i % 4, (i * 3) % 4, i % 3
        path = root / f"patch_{i}.png"
        path.write_bytes(encode(Image.fromarray(patch_image(64, row, col, channel)), "PNG"))
        patches[str(path)] = (row, col, channel)
    for name, data in bad_files(sample_jpeg).items():
        path = root / name
        path.write_bytes(data)
        bad[str(path)] = BAD_REASONS[name]
    return {"root": root, "good": good, "patches": patches, "bad": bad}


@pytest.fixture
def gcs_images(image_dir, bucket) -> dict:
    """image_dir uploaded to gs://BUCKET/images/ with the real client; the same dict, with
    gs:// URIs (root included)."""
    from google.cloud import storage

    local_root = image_dir["root"]
    target = storage.Client().bucket(bucket)

    def upload(path: str) -> str:
        name = f"images/{pathlib.Path(path).relative_to(local_root)}"
        target.blob(name).upload_from_filename(path)
        return f"gs://{bucket}/{name}"

    return {
        "root": f"gs://{bucket}/images",
        "good": [upload(p) for p in image_dir["good"]],
        "patches": {upload(p): v for p, v in image_dir["patches"].items()},
        "bad": {upload(p): v for p, v in image_dir["bad"].items()},
    }


@pytest.fixture(scope="module")
def jar() -> str:
    """Beam's Flink job-server jar (fetched with Maven the first time), for a Flink test file."""
    from tests.flink_cluster import job_server_jar

    return job_server_jar()


@pytest.fixture(scope="module")
def cluster(jar, tmp_path_factory):
    """A Flink cluster on 127.0.0.1 for one test file: one TaskManager of two slots."""
    from tests.flink_cluster import FlinkCluster

    flink = FlinkCluster(tmp_path_factory.mktemp("cluster"), taskmanagers=1, slots=2).start()
    yield flink
    flink.stop()
