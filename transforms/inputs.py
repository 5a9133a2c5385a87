"""Stage 1: file patterns and manifests -> the distinct image URIs to label."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from transforms import metrics

URI_COLUMN = "uri"


def normalize_uri(uri: str) -> str:
    """Local paths become absolute (so a file named two ways is labelled once)."""
    uri = uri.strip()
    if FileSystems.get_scheme(uri) in (None, "file"):
        return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    return uri


def manifest_kind(path: str) -> str:
    lowered = path.lower()
    if lowered.endswith(".parquet"):
        return "parquet"
    if lowered.endswith(".csv"):
        return "csv"
    return "text"


def uris_from_text(lines: Iterable[str]) -> Iterator[str]:
    """One URI a line; blank lines and '#' comments are skipped."""
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


def uris_from_csv(path: str) -> Iterator[str]:
    """Streams the uri column of a CSV manifest (any Beam filesystem)."""
    with FileSystems.open(path) as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        if URI_COLUMN not in (reader.fieldnames or []):
            raise ValueError(f"manifest {path} has no '{URI_COLUMN}' column")
        for row in reader:
            uri = (row[URI_COLUMN] or "").strip()
            if uri:
                yield uri


def manifest_columns(path: str) -> list[str]:
    """Column names of a CSV or Parquet manifest (reads the header or footer only)."""
    if manifest_kind(path) == "parquet":
        import pyarrow.parquet as pq

        with FileSystems.open(path) as f:
            return list(pq.ParquetFile(f).schema_arrow.names)
    with FileSystems.open(path) as raw:
        header = io.TextIOWrapper(raw, encoding="utf-8", newline="").readline()
    return next(csv.reader([header]), [])


class ReadManifest(beam.PTransform):
    """A manifest file (text, .csv or .parquet with a 'uri' column) -> URIs."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, pipeline):
        kind = manifest_kind(self._path)
        if kind == "parquet":
            rows = pipeline | beam.io.ReadFromParquet(self._path, columns=[URI_COLUMN])
            return rows | beam.FlatMap(lambda row: uris_from_text([row[URI_COLUMN] or ""]))
        if kind == "csv":
            return pipeline | beam.Create([self._path]) | beam.FlatMap(uris_from_csv)
        return (
            pipeline
            | beam.io.ReadFromText(self._path)
            | beam.FlatMap(lambda line: uris_from_text([line]))
        )


class ListInputs(beam.PTransform):
    """Patterns (matched by Beam's filesystems, ** allowed) plus a manifest -> normalised URIs,
    duplicates included (KeepNew removes them)."""

    def __init__(self, patterns: Sequence[str], manifest: str | None = None):
        super().__init__()
        self._patterns = list(patterns)
        self._manifest = manifest

    def expand(self, pipeline):
        sources = []
        if self._patterns:
            sources.append(
                pipeline
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> fileio.MatchAll()
                | "Paths" >> beam.Map(lambda meta: meta.path)
            )
        if self._manifest:
            sources.append(pipeline | "Manifest" >> ReadManifest(self._manifest))
        return (
            sources
            | "AllSources" >> beam.Flatten(pipeline=pipeline.pipeline)
            | "Normalize" >> beam.Map(normalize_uri)
        )


def new_uris(grouped: tuple[str, dict[str, Iterable]]) -> Iterator[str]:
    """(uri, {"wanted": [...], "done": [...]}) -> the uri once if wanted and not done."""
    uri, sides = grouped
    if not any(True for _ in sides["wanted"]):
        return
    if any(True for _ in sides["done"]):
        metrics.images_skipped.inc()
        return
    metrics.count_queued()
    yield uri


class KeepNew(beam.PTransform):
    """(wanted URIs, done URIs) -> each wanted URI once, unless it is done.

    One CoGroupByKey does both the de-duplication and the skip, on strings: decoded pixels
    never cross a shuffle.
    """

    def expand(self, pcolls):
        wanted, done = pcolls
        return (
            {
                "wanted": wanted | "KeyWanted" >> beam.Map(lambda uri: (uri, None)),
                "done": done | "KeyDone" >> beam.Map(lambda uri: (uri, None)),
            }
            | "ByUri" >> beam.CoGroupByKey()
            | "New" >> beam.FlatMap(new_uris)
        )
