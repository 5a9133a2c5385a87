"""One run per output and date at a time: a lease, ROOT/_temp/lease-<date>, that a run holds
from before its first read of the partitions until after its last write; a run that reads
every date's partitions (to skip what any date holds) takes the whole output's,
ROOT/_temp/lease-all-dates.

The lease is a small JSON document naming its owner (host, pid, the pid's start time, run id)
and a heartbeat the owner renews every HEARTBEAT_SECONDS. It is created only where none
exists (locally an atomic link or O_EXCL create; on gs:// an upload with
if_generation_match=0), so of two runs started together exactly one gets it; the other is
refused (LeaseHeld, whose message names the holder). A lease whose owner has gone (its pid is
no longer running on this host, or its heartbeat is older than STALE_AFTER_SECONDS, from any
host) is taken over by a compare-and-swap: locally under a short-lived mutex file, on gs://
by an upload with if_generation_match=<the generation judged stale>. Heartbeats and the
release are compare-and-swaps too, so a run never renews or deletes a lease it does not hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from transforms.storage import gcs
from transforms.storage.uris import is_gcs, split_gcs

LEASE_PREFIX = "lease-"
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 10 * 60.0  # 20 missed heartbeats: the owner is gone
MUTEX_STALE_SECONDS = 30.0  # a local swap takes milliseconds; a mutex this old was abandoned


class LeaseHeld(Exception):
    """Another run holds the lease; the message names it and says what to do."""


@dataclasses.dataclass(frozen=True)
class Owner:
    run_id: str
    host: str
    pid: int
    pid_start: str | None  # the pid's start time (Linux /proc), so a reused pid is not taken
    started: float  # wall-clock seconds
    heartbeat: float

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Owner | None:
        """None when the bytes are not a whole lease (being written, or damaged)."""
        try:
            fields = json.loads(data.decode())
            return cls(
                run_id=str(fields["run_id"]),
                host=str(fields["host"]),
                pid=int(fields["pid"]),
                pid_start=None if fields.get("pid_start") is None else str(fields["pid_start"]),
                started=float(fields["started"]),
                heartbeat=float(fields["heartbeat"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            return None

    def describe(self, now: float) -> str:
        started = dt.datetime.fromtimestamp(self.started, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        return (
            f"run {self.run_id} (pid {self.pid} on {self.host}, started {started} UTC, "
            f"last heartbeat {max(0, round(now - self.heartbeat))} s ago)"
        )


def process_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot, /proc/PID/stat field 22), or None
    where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # fields after the command name start at 3


def pid_running(pid: int, pid_start: str | None) -> bool:
    """Whether the process is still the one that wrote the lease (same pid, same start)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    except (OverflowError, ValueError):
        return False
    if pid_start is None:
        return True
    now = process_start(pid)
    return now is None or now == pid_start


def abandoned(owner: Owner | None, age: float, now: float, stale_after: float) -> bool:
    """Whether a lease can be taken over: its owner's process has ended (on this host), or
    its heartbeat (or, for a lease that cannot be read, the file itself) is too old."""
    if owner is None:
        return age > stale_after
    if now - owner.heartbeat > stale_after:
        return True
    return owner.host == socket.gethostname() and not pid_running(owner.pid, owner.pid_start)


class _LocalStore:
    """The lease as a local file; compare-and-swap under a mutex file made with O_EXCL."""

    def __init__(self, path: str):
        self.path = path
        self._mutex = path + ".swap"

    def create(self, data: bytes) -> object | None:
        """Creates the lease with `data` if none exists; a token for later swaps, or None."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        staging = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(staging, "wb") as f:
            f.write(data)
        try:
            os.link(staging, self.path)  # atomic, and the lease appears whole
            return data
        except FileExistsError:
            return None
        except OSError:  # a file system without hard links: O_EXCL, then the content
            return self._create_exclusive(data)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(staging)

    def _create_exclusive(self, data: bytes) -> object | None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        with open(fd, "wb") as f:
            f.write(data)
        return data

    def read(self) -> tuple[bytes, float, object] | None:
        """(content, age in seconds, token), or None when there is no lease."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(64 << 10)
                age = time.time() - os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return data, age, data

    def swap(self, token: object, data: bytes | None) -> object | None:
        """Replaces (data) or deletes (None) the lease if it still holds `token`; the new
        token, or None if the lease changed meanwhile."""
        with self._locked():
            try:
                with open(self.path, "rb") as f:
                    current = f.read(64 << 10)
            except FileNotFoundError:
                return None
            if current != token:
                return None
            if data is None:
                os.unlink(self.path)
                return b""
            staging = f"{self.path}.{uuid.uuid4().hex}.tmp"
            try:
                with open(staging, "wb") as f:
                    f.write(data)
                os.replace(staging, self.path)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(staging)
            return data

    @contextlib.contextmanager
    def _locked(self, wait: float = 10.0):
        deadline = time.monotonic() + wait
        while True:
            try:
                os.close(os.open(self._mutex, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                break
            except FileExistsError:
                with contextlib.suppress(OSError):
                    if time.time() - os.stat(self._mutex).st_mtime > MUTEX_STALE_SECONDS:
                        os.unlink(self._mutex)  # left by a process that died mid-swap
                        continue
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self._mutex} is held by another process") from None
                time.sleep(0.01)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self._mutex)


class _GcsStore:
    """The lease as a Cloud Storage object; every change is conditional on its generation."""

    def __init__(self, uri: str, client):
        bucket, name = split_gcs(uri)
        self.path = uri
        self._bucket = client.bucket(bucket)
        self._name = name

    def create(self, data: bytes) -> object | None:
        from google.api_core import exceptions

        blob = self._bucket.blob(self._name)
        try:
            blob.upload_from_string(data, content_type="application/json", if_generation_match=0)
        except exceptions.PreconditionFailed:
            return None
        return blob.generation

    def read(self) -> tuple[bytes, float, object] | None:
        from google.api_core import exceptions

        blob = self._bucket.get_blob(self._name)
        if blob is None:
            return None
        # Taken from the metadata: the download resets it from a header not every server sends.
        generation = blob.generation
        try:
            data = blob.download_as_bytes(if_generation_match=generation)
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            return self.read()  # it changed between the two requests
        updated = blob.updated.timestamp() if blob.updated else time.time()
        return data, time.time() - updated, generation

    def swap(self, token: object, data: bytes | None) -> object | None:
        from google.api_core import exceptions

        blob = self._bucket.blob(self._name)
        try:
            if data is None:
                blob.delete(if_generation_match=token)
                return 0
            blob.upload_from_string(
                data, content_type="application/json", if_generation_match=token
            )
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            return None
        return blob.generation


ALL_DATES = "all-dates"  # the scope of a run that reads every date's rows


def lease_uri(root: str, date: str, temp_dir: str = "_temp") -> str:
    return f"{root.rstrip('/')}/{temp_dir}/{LEASE_PREFIX}{date}"


class Lease:
    """The lease on ROOT's partition for `date`, for run `run_id`: acquire() or LeaseHeld,
    renewed on a daemon thread while held, release() at the end (and on a signal). On gs://
    it is written as the job writes its output: with the job's options (gcs.access)."""

    def __init__(self, root: str, date: str, run_id: str, storage_options: Mapping | Any = None):
        self.uri = lease_uri(root, date)
        self._root, self._date = root, date
        if is_gcs(self.uri):
            self._store = _GcsStore(self.uri, gcs.access(storage_options).client)
        else:
            self._store = _LocalStore(self.uri)
        self._run_id = run_id
        self._token: object | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _owner(self, started: float | None = None) -> Owner:
        now = time.time()
        pid = os.getpid()
        return Owner(
            run_id=self._run_id,
            host=socket.gethostname(),
            pid=pid,
            pid_start=process_start(pid),
            started=started if started is not None else now,
            heartbeat=now,
        )

    def acquire(self, attempts: int = 5) -> Lease:
        """Takes the lease, or an abandoned one over; LeaseHeld if a live run holds it."""
        self._started = time.time()
        for _ in range(attempts):
            token = self._store.create(self._owner(self._started).to_bytes())
            if token is not None:
                return self._held(token)
            found = self._store.read()
            if found is None:
                continue  # released meanwhile: try again
            data, age, token = found
            holder = Owner.from_bytes(data)
            now = time.time()
            if not abandoned(holder, age, now, STALE_AFTER_SECONDS):
                raise LeaseHeld(self._refusal(holder, now))
            new = self._store.swap(token, self._owner(self._started).to_bytes())
            if new is not None:
                return self._held(new)
            # another run took it over (or it was released) first: look again
        raise LeaseHeld(
            f"{self.uri} keeps changing: another run is starting on the same --output and "
            "--date; try again when it has finished"
        )

    def _refusal(self, holder: Owner | None, now: float) -> str:
        who = holder.describe(now) if holder else "another run (its lease is being written)"
        scope = "" if self._date == ALL_DATES else f" for --date {self._date}"
        return (
            f"--output {self._root}{scope} is being written by {who}; one run per output and "
            f"date at a time: wait for it to finish (a lease whose run has gone, {self.uri}, is "
            "taken over by the next run)"
        )

    def _held(self, token: object) -> Lease:
        self._token = token
        self._stop.clear()
        thread = threading.Thread(target=self._renew_until_released, name="lease", daemon=True)
        thread.start()
        return self

    def _renew_until_released(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.renew()

    def renew(self) -> bool:
        """Writes a fresh heartbeat; False if the lease could not be renewed (a full disk, a
        storage fault: tried again at the next beat) or is no longer ours."""
        with self._lock:
            if self._token is None:
                return False
            try:
                new = self._store.swap(self._token, self._owner(self._started).to_bytes())
            except Exception:  # a write fault: the run's own writes will say so
                return False
            if new is not None:
                self._token = new
            return new is not None

    def release(self) -> None:
        """Deletes the lease if this run still holds it; never raises (an unwritable folder
        leaves it for the next run to take over: its owner has gone by then)."""
        self._stop.set()
        with self._lock, contextlib.suppress(Exception):
            token, self._token = self._token, None
            if token is None:  # a signal between creating the lease and noting its token
                found = self._store.read()
                holder = Owner.from_bytes(found[0]) if found else None
                if holder is None or holder.run_id != self._run_id:
                    return
                token = found[2]
            self._store.swap(token, None)
