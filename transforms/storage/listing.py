"""What a listing knows of each object, and the version of its content: the record the first
stage carries (uri, size, source version, checksum), made from a local stat or a Beam listing
(gs:// listings are made in gcs.py)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

from apache_beam.io.filesystem import FileMetadata


@dataclasses.dataclass(frozen=True)
class Listed:
    """An input as listed. version: what changes when the content does (gs:// the object's
    generation, local files size:mtime_ns, other filesystems what their listing gives, ""
    when nothing does). checksum: "crc32c:<b64>" or "md5:<b64>" where the listing gives one
    for free, else "" (then content is never taken to be identical). size -1: unknown."""

    uri: str
    size: int = -1
    version: str = ""
    checksum: str = ""


# Inputs of identical content (same content_key), read, decoded and inferred once: the first
# is read, every one gets its own row.
Work = tuple[Listed, ...]


def local_version(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def describe_local(path: str) -> Listed:
    """A local path as listed; one that cannot be stat'ed (gone, dangling link, too long a
    name) is listed without a version, and its read later says why."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return Listed(path)
    return Listed(path, st.st_size, local_version(st))


def from_metadata(meta: FileMetadata) -> Listed:
    """Another Beam filesystem's listing entry: its size and, where it says, last update."""
    updated = getattr(meta, "last_updated_in_seconds", None)
    version = f"{meta.size_in_bytes}:{updated}" if updated else ""
    return Listed(meta.path, meta.size_in_bytes, version)


def content_key(item: Listed) -> str:
    """Inputs with the same key have the same bytes (size and a listed checksum): read,
    decoded and inferred once. Without a checksum, each URI is its own key."""
    if item.checksum and item.size >= 0:
        return f"{item.size}:{item.checksum}"
    return "uri:" + item.uri


def as_work(items: Iterable[Listed]) -> Work:
    """Inputs of one content key -> the work unit, in URI order (the first is read)."""
    return tuple(sorted(items, key=lambda item: item.uri))
