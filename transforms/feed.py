"""Reads and decodes ahead of the model: URI -> (uri, uint8 image), or a tagged error row
(stage read or decode). Reads (storage/) run many at a time on their own threads, decoding on
about one thread per core; both pools and the bytes-in-flight budget are shared by the process.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.shared import Shared

from transforms import metrics
from transforms import vocabulary as v
from transforms.images import DEFAULT_MAX_PIXELS, decoded_bytes, open_image, to_square
from transforms.rows import failure_row
from transforms.storage import bounded, gcs, local
from transforms.storage.bounded import MB
from transforms.storage.listing import Work
from transforms.storage.uris import is_gcs

DEFAULT_READ_CONCURRENCY = 32
DEFAULT_MAX_INFLIGHT_BYTES = 256 * MB
DEFAULT_MAX_OBJECT_BYTES = 100 * MB

Output = Any  # (work, image) or TaggedOutput(ERRORS, error row)


class Failure(NamedTuple):
    """Inputs whose read or decode failed: an error row for each. last: the work unit's
    final result (a read that failed with members of identical content left to read is not)."""

    work: Work
    stage: str
    exc: BaseException
    last: bool = True

    def rows(self) -> list[dict]:
        return [failure_row(i.uri, self.stage, self.exc, i.version) for i in self.work]


def usable_cores() -> int:
    """Cores this process may run on (taskset and cgroup cpusets included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Workers:
    """`count` daemon threads running the calls submitted to them, in submission order.

    What a ThreadPoolExecutor does for this module at a fraction of its cost per call (no
    Future, no lock, no idle-thread bookkeeping: one SimpleQueue put and get). A call that
    raises kills nothing (the callers here turn every failure into a result themselves).
    After shutdown(), pending calls are dropped and submit() raises RuntimeError.
    """

    def __init__(self, count: int, name: str):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        for i in range(count):
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True).start()
        self._count = count

    def submit(self, fn: Callable, *args: Any) -> None:
        if self._closed:
            raise RuntimeError("cannot schedule new calls after shutdown")
        self._calls.put((fn, args))

    def _work(self) -> None:
        while (call := self._calls.get()) is not None and not self._closed:
            fn, args = call
            try:
                fn(*args)
            except BaseException:  # the callers turn every failure into a result themselves
                pass
            del call, fn, args  # hold nothing (image bytes) while idle

    def shutdown(self) -> None:
        self._closed = True
        for _ in range(self._count):
            self._calls.put(None)


class Feeder:
    """Reads and decodes URIs for every ReadAndDecode of one process.

    `read_concurrency` read threads, fed in submission order; each read holds its bytes in
    a ByteBudget of `max_inflight_bytes` until a decode thread has decoded them. Results go to
    the queue given with the URI, in completion order, exactly one per URI.
    """

    def __init__(
        self,
        read_concurrency: int,
        max_inflight_bytes: int,
        max_object_bytes: int,
        storage_options: dict | None = None,
    ):
        self.read_concurrency = read_concurrency
        self.storage_options = storage_options or {}  # the job's, for gs:// (gcs.access)
        self.max_object_bytes = max_object_bytes
        self.budget = bounded.ByteBudget(max_inflight_bytes)  # read, not yet decoded
        # Decoded frames being made (images.decoded_bytes), under the same limit: decodes of
        # huge frames (16-bit, many megapixels) wait for each other, one always let in.
        self.pixels = bounded.ByteBudget(max_inflight_bytes)
        # What a read whose size is not announced holds until it is read.
        self.unknown_size = max(MB, max_inflight_bytes // read_concurrency)
        self.decode_threads = usable_cores()
        self._reads = Workers(read_concurrency, "read")
        self._decodes = Workers(self.decode_threads, "decode")
        self._gcs: gcs.GcsReader | None = None
        self._gcs_lock = threading.Lock()
        # Once no ReadAndDecode holds it, its threads end (the threads hold only the pools).
        weakref.finalize(self, shut_down, self._reads, self._decodes)

    def submit(self, work: Work, image_size: int, max_pixels: int, done: queue.SimpleQueue):
        """Reads the work's inputs in order until one reads (a read that fails is that input's
        own Failure, not last) and decodes it: puts (the inputs from it on, image) or their
        Failure, last."""
        self._reads.submit(self._read, work, image_size, max_pixels, done)

    def read_bytes(self, uri: str) -> bytes:
        """The object's bytes, held in the budget (the caller releases len(result))."""
        if is_gcs(uri):
            gcs = self._gcs_reader()
            return gcs.read(uri, self.max_object_bytes, self.unknown_size, self.budget)
        return local.read_bounded(uri, self.max_object_bytes, self.budget)

    def _gcs_reader(self) -> gcs.GcsReader:
        with self._gcs_lock:
            if self._gcs is None:
                self._gcs = gcs.GcsReader(self.storage_options)
            return self._gcs

    def _read(self, work: Work, image_size: int, max_pixels: int, done: queue.SimpleQueue):
        for i, item in enumerate(work):
            try:
                data = self.read_bytes(item.uri)
            except BaseException as e:  # every failure becomes an error row, its input's own
                done.put(Failure((item,), v.READ, e, last=i == len(work) - 1))
                continue
            rest = work[i:]  # inputs of identical content: served by this read
            try:
                self._decodes.submit(self._decode, rest, data, image_size, max_pixels, done)
            except BaseException as e:  # a pool shut down under us
                self.budget.release(len(data))
                done.put(Failure(rest, v.DECODE, e))
            return

    def _decode(self, work: Work, data: bytes, image_size: int, max_pixels: int, done):
        try:
            img = open_image(data, max_pixels)
            cost = decoded_bytes(img, image_size)
            self.pixels.acquire(cost)  # a decode's frames count, not only its file's bytes
            try:
                out = work, to_square(data, img, image_size)
            finally:
                self.pixels.release(cost)
        except BaseException as e:  # every failure becomes an error row
            out = Failure(work, v.DECODE, e)
        finally:
            self.budget.release(len(data))
            del data
        done.put(out)


def shut_down(*pools: Workers) -> None:
    for pool in pools:
        pool.shutdown()


# The process's Feeder: Beam's per-process cache (RunInference keeps its model in one too),
# tagged by the settings; it lives while a ReadAndDecode holds it.
_FEEDER = Shared()


def acquire_feeder(*settings: int, storage_options: dict | None = None) -> Feeder:
    """The process's Feeder for these settings and the job's storage options (the
    job_options() dict gs:// reads are made with), made on first use."""
    options = storage_options or {}
    return _FEEDER.acquire(lambda: Feeder(*settings, options), tag=(*settings, options))


class ReadAndDecode(beam.DoFn):
    """Reads and preprocesses images ahead of the model, on the process's shared threads.

    Storage reads and PIL release the GIL, so the next images are fetched and decoded while
    the model (downstream, in the same fused stage) runs on the current batch. Outputs come in
    completion order; at most read_concurrency + 2 per decode thread images of one bundle are
    in flight, and their undecoded bytes stay under max_inflight_bytes.
    """

    def __init__(
        self,
        image_size: int,
        read_concurrency: int = DEFAULT_READ_CONCURRENCY,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        storage_options: dict | None = None,
    ):
        self._image_size = image_size
        self._settings = (read_concurrency, max_inflight_bytes, max_object_bytes)
        # The job's PipelineOptions that were set (gcs.job_options), taken at graph
        # construction so the workers read gs:// as the job, as Beam's own client does.
        self._storage_options = storage_options or {}
        self._max_pixels = max_pixels

    def setup(self):
        self._feeder = acquire_feeder(*self._settings, storage_options=self._storage_options)
        self._ahead = self._feeder.read_concurrency + 2 * self._feeder.decode_threads

    def start_bundle(self):
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0

    def process(self, work: Work):
        metrics.images_read.inc(len(work))
        self._feeder.submit(work, self._image_size, self._max_pixels, self._done)
        self._pending += 1
        yield from self._take(block=self._pending > self._ahead)

    def _take(self, block: bool, wrap: Callable = lambda out: out):
        """Whatever has finished; with block, at least one result (if any is pending)."""
        while self._pending:
            try:
                out = self._done.get(block=block)
            except queue.Empty:
                return
            if not isinstance(out, Failure) or out.last:  # a work unit done
                block = False
                self._pending -= 1
            if not isinstance(out, Failure):
                yield wrap(out)
                continue
            for row in out.rows():
                # Counted here, on the bundle's thread: Beam metrics do not see the pool's.
                metrics.count_failure(row)
                yield wrap(beam.pvalue.TaggedOutput(v.ERRORS, row))

    def finish_bundle(self):
        while self._pending:
            yield from self._take(block=True, wrap=windowed)

    def teardown(self):
        self._feeder = None  # the last holder gone, the Feeder's finaliser stops its threads


def windowed(out: Output):
    """finish_bundle's outputs carry their window (the global one: a batch job)."""
    if isinstance(out, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
    return GlobalWindows.windowed_value(out)
