"""CPU per gs:// object: the hand-written reader (transforms/storage/gcs.py) against
google-cloud-storage's Blob.download_as_bytes(checksum="crc32c"), on a loopback emulator."""

# .venv/bin/python -m benchmarks.gcs_reader [--n 300] [--rounds 3] [--in_flight 1,32]
#
# Uploads --n random objects of 100 KB and --n of 2 MB to an in-memory GCS emulator (on the
# machine's last core; this process on the others), then reads every object with each, one at
# a time and --in_flight at once (threads), in alternating rounds. CPU is this process's
# (time.process_time: all its threads, not the emulator's); the median round is kept. Both use
# the job's client set-up (gcs.access), the client with as many pooled connections as reads in
# flight. Prints a table and one JSON line; docs/performance.md has the figures.

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

SIZES = {"100 KB": 100_000, "2 MB": 2_000_000}
BUCKET = "bench"


def upload(n: int) -> dict[str, list[str]]:
    """--n objects of each size (random bytes, as incompressible as photos): {size: [uri]}."""
    from google.cloud import storage

    bucket = storage.Client(project="bench").create_bucket(BUCKET)
    uris: dict[str, list[str]] = {}
    for label, size in SIZES.items():
        names = [f"{size}/{i:04}.jpg" for i in range(n)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(put, [bucket] * n, names, [size] * n))
        uris[label] = [f"gs://{BUCKET}/{name}" for name in names]
    return uris


def put(bucket, name: str, size: int) -> None:
    bucket.blob(name).upload_from_string(os.urandom(size), content_type="image/jpeg")


def our_reader(in_flight: int) -> Callable[[str], bytes]:
    from transforms.storage import gcs
    from transforms.storage.bounded import MB, ByteBudget

    del in_flight  # a libcurl handle per calling thread: no pool to size
    reader = gcs.GcsReader({})
    budget = ByteBudget(1 << 40)

    def read(uri: str) -> bytes:
        data = reader.read(uri, 100 * MB, MB, budget)
        budget.release(len(data))
        return data

    return read


def client_download(in_flight: int) -> Callable[[str], bytes]:
    import requests
    from google.cloud import storage

    from transforms.storage import gcs

    client = gcs.access({}).client  # the job's client, as tests/test_gcs_contract.py calls it
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=in_flight + 4)
    for scheme in ("http://", "https://"):
        client._http.mount(scheme, adapter)  # requests keeps 10 otherwise
    bucket = client.bucket(BUCKET)

    def read(uri: str) -> bytes:
        name = uri.removeprefix(f"gs://{BUCKET}/")
        return storage.Blob(name, bucket).download_as_bytes(checksum="crc32c")

    return read


READERS = {"hand-written reader": our_reader, "download_as_bytes": client_download}


def timed(read: Callable[[str], bytes], uris: list[str], in_flight: int) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) to read every URI, in_flight at a time."""
    cpu, wall = time.process_time(), time.perf_counter()
    if in_flight == 1:
        total = sum(len(read(uri)) for uri in uris)
    else:
        with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
            total = sum(len(data) for data in pool.map(read, uris))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert total > 0
    return cpu, wall


def measure(uris: dict[str, list[str]], in_flights: list[int], rounds: int) -> list[dict]:
    rows = []
    for in_flight in in_flights:
        readers = {name: make(in_flight) for name, make in READERS.items()}
        first = uris["100 KB"][0]
        once = {name: read(first) for name, read in readers.items()}  # warm: token, connections
        assert len(set(once.values())) == 1, "the two reads differ"
        for label, batch in uris.items():
            cpu: dict[str, list[float]] = {name: [] for name in readers}
            wall: dict[str, list[float]] = {name: [] for name in readers}
            for r in range(rounds):
                order = list(readers) if r % 2 == 0 else list(reversed(readers))
                for name in order:
                    c, w = timed(readers[name], batch, in_flight)
                    cpu[name].append(c)
                    wall[name].append(w)
            row = {"size": label, "in_flight": in_flight, "objects": len(batch)}
            for name in readers:
                row[f"{name} cpu_ms"] = 1000 * statistics.median(cpu[name]) / len(batch)
                row[f"{name} wall_ms"] = 1000 * statistics.median(wall[name]) / len(batch)
            row["cpu ratio client / ours"] = (
                row["download_as_bytes cpu_ms"] / row["hand-written reader cpu_ms"]
            )
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="objects of each size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in_flight", default="1,32", help="reads at once, comma-separated")
    args = parser.parse_args(argv)
    in_flights = [int(x) for x in args.in_flight.split(",")]

    from tests.gcs_servers import Emulator, MetadataServer, free_port, metadata_env

    # The servers stand in for Cloud Storage, whose CPU is not the reader's: the last core
    # serves (a one-core machine shares it), as in benchmarks/run.py.
    cores = sorted(os.sched_getaffinity(0))
    servers, ours = {cores[-1]}, set(cores[:-1]) or {cores[-1]}
    work = tempfile.mkdtemp(prefix="gcs-reader-bench-")
    os.sched_setaffinity(0, servers)  # the children start there
    metadata = MetadataServer(free_port()).start()
    emulator = Emulator(os.path.join(work, "gcs"), threaded=True, in_memory=True).start()
    os.sched_setaffinity(0, ours)
    # Set before google.auth is imported (it reads them then).
    os.environ.update(metadata_env(metadata.port), STORAGE_EMULATOR_HOST=emulator.endpoint)
    os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    try:
        uris = upload(args.n)
        rows = measure(uris, in_flights, args.rounds)
    finally:
        emulator.stop()
        metadata.stop()
    report = {
        "date": dt.date.today().isoformat(),
        "python": platform.python_version(),
        "machine": f"{os.cpu_count()} cores ({len(ours)} for the reads), {platform.machine()}",
        "rows": rows,
    }
    print(f"{'size':<8}{'in flight':>10}{'ours ms CPU':>13}{'client ms CPU':>15}{'ratio':>8}")
    for row in rows:
        print(
            f"{row['size']:<8}{row['in_flight']:>10}{row['hand-written reader cpu_ms']:>13.3f}"
            f"{row['download_as_bytes cpu_ms']:>15.3f}{row['cpu ratio client / ours']:>8.2f}"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
