"""Stage 2 in Beam: URI -> (uri, uint8 image), or a tagged error row (stage read or decode)."""

from __future__ import annotations

import collections
from concurrent.futures import Future, ThreadPoolExecutor

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from transforms import metrics
from transforms import vocabulary as v
from transforms.preprocess import DEFAULT_MAX_PIXELS, decode_and_resize
from transforms.rows import failure_row


def read_bytes(uri: str) -> bytes:
    """Whole object through Beam's filesystems (local, gs://, ...), never decompressed."""
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def read_and_decode(uri: str, image_size: int, max_pixels: int):
    """(uri, image), or a TaggedOutput error row naming the stage that failed; never raises."""
    stage = v.READ
    try:
        data = read_bytes(uri)
        stage = v.DECODE
        return uri, decode_and_resize(data, image_size, max_pixels)
    except Exception as e:  # noqa: BLE001 - every failure becomes an error row
        return beam.pvalue.TaggedOutput(v.ERRORS, failure_row(uri, stage, e))


class ReadAndDecode(beam.DoFn):
    """Reads and preprocesses images a few elements ahead, on background threads.

    PIL and storage reads release the GIL, so the next images are fetched and decoded while
    the model (downstream, in the same fused stage) runs on the current batch. Outputs keep
    input order; at most `prefetch` images are in flight.
    """

    def __init__(self, image_size: int, prefetch: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS):
        self._image_size = image_size
        self._prefetch = prefetch
        self._max_pixels = max_pixels

    def setup(self):
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")

    def start_bundle(self):
        self._pending: collections.deque[Future] = collections.deque()

    def process(self, uri: str):
        metrics.images_read.inc()
        self._pending.append(
            self._pool.submit(read_and_decode, uri, self._image_size, self._max_pixels)
        )
        while len(self._pending) > self._prefetch:
            yield self._next()

    def _next(self):
        # Counted here, on the bundle's thread: Beam metrics do not see the pool's threads.
        out = self._pending.popleft().result()
        if isinstance(out, beam.pvalue.TaggedOutput):
            metrics.count_failure(out.value)
        return out

    def finish_bundle(self):
        while self._pending:
            out = self._next()
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
            else:
                yield GlobalWindows.windowed_value(out)

    def teardown(self):
        self._pool.shutdown(wait=False)
