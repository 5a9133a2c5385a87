"""Class names for the model's outputs: the bundled ImageNet list or a user file."""

from __future__ import annotations

import os

from transforms.storage.local import read_whole

# The 1,000 ImageNet-1k class names in model output order (index 0 is "tench"), i.e. the
# usual ImageNetLabels.txt without its leading "background" line.
DEFAULT_LABELS = os.path.join(os.path.dirname(__file__), "data", "imagenet_labels.txt")


# A labels file is a start-up read, bounded as an image read is: 16 MiB holds 500,000 names
# of 32 bytes (ImageNet-21k has 21,843).
MAX_LABELS_BYTES = 16 << 20


def parse_labels(data: bytes) -> list[str]:
    """One class name a line: UTF-8 (a byte-order mark ignored), split on line feeds only,
    so U+0085, U+2028 or a form feed inside a name are part of it (str.splitlines would cut
    there and shift every later name); a '\r' before the '\n' and spaces around a name
    dropped, blank lines at the end ignored."""
    names = [name.strip() for name in data.decode("utf-8-sig").split("\n")]
    while names and not names[-1]:
        names.pop()
    return names


def load_labels(path: str = DEFAULT_LABELS) -> list[str]:
    """parse_labels of a regular file of at most MAX_LABELS_BYTES (any Beam filesystem);
    ImageError for a FIFO, a device, a folder or a larger file, unread."""
    return parse_labels(read_whole(path, MAX_LABELS_BYTES))
