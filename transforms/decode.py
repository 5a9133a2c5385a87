"""Stage 2 in Beam: URI -> (uri, uint8 image), or a tagged error row (stage read or decode)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import metrics
from transforms.preprocess import DEFAULT_MAX_PIXELS, decode_and_resize
from transforms.rows import describe, error_row

ERRORS = "errors"


def read_bytes(uri: str) -> bytes:
    """Whole object through Beam's filesystems (local, gs://, ...), never decompressed."""
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


class ReadAndDecode(beam.DoFn):
    """Reads and preprocesses one image; bad input goes to the ERRORS output, never raises."""

    def __init__(self, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS):
        self._image_size = image_size
        self._max_pixels = max_pixels

    def process(self, uri: str):
        metrics.images_read.inc()
        stage = "read"
        try:
            data = read_bytes(uri)
            stage = "decode"
            image = decode_and_resize(data, self._image_size, self._max_pixels)
        except Exception as e:  # noqa: BLE001 - every failure becomes an error row
            metrics.failed[stage].inc()
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(uri, stage, describe(e)))
            return
        yield uri, image
