"""Class names for the model's outputs: the bundled ImageNet list or a user file."""

from __future__ import annotations

import os

from apache_beam.io.filesystems import FileSystems

# The 1,000 ImageNet-1k class names in model output order (index 0 is "tench"), i.e. the
# usual ImageNetLabels.txt without its leading "background" line.
DEFAULT_LABELS = os.path.join(os.path.dirname(__file__), "data", "imagenet_labels.txt")


def load_labels(path: str = DEFAULT_LABELS) -> list[str]:
    """One class name a line, blank lines at the end ignored (any Beam filesystem)."""
    with FileSystems.open(path) as f:
        names = f.read().decode("utf-8").splitlines()
    while names and not names[-1].strip():
        names.pop()
    return [name.strip() for name in names]
