"""The first stage: file patterns and manifests -> the distinct image URIs to label; also the
one home of what a pattern or a manifest may hold (config runs the same readers as start-up
checks)."""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from transforms import metrics
from transforms.output import output_prefixes
from transforms.printable import error_line, printable
from transforms.storage.uris import normalize_uri

URI_COLUMN = "uri"


class InputError(ValueError):
    """A pattern or manifest the job cannot use; the message names it and says why."""


# --- Patterns ------------------------------------------------------------------------------

_LITERAL_PREFIX = re.compile(r"[^[*?]*")  # a pattern up to its first glob character
# Beam's translate_pattern turns '*' into this, stopping at '\' as at '/': on POSIX file
# systems and in object stores '\' is an ordinary character of a name, so 'DIR/*' would miss
# 'DIR/back\slash.jpg'. A bracket class never renders as this text followed by '*', and a
# literal '*' cannot occur, so the replacement touches translated stars only.
_BEAM_STAR, _STAR = r"[^/\\]*", r"[^/]*"


def has_glob(pattern: str) -> bool:
    return _LITERAL_PREFIX.match(pattern)[0] != pattern


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Beam's glob syntax ('*' within a folder, '**' across folders, '?', '[...]'), except
    that '*' stops only at '/'."""
    return re.compile(FileSystem.translate_pattern(pattern).replace(_BEAM_STAR, _STAR))


def match_pattern(pattern: str, exclude: Sequence[str] = ()) -> list[str]:
    """Paths of the files `pattern` matches (any Beam filesystem), except those starting with
    one of `exclude` (the run's own output). A pattern without glob characters names one file.

    Globs list everything under the pattern's literal prefix with Beam's '**' (the listing
    Beam's own match makes) and keep what glob_regex accepts."""
    if has_glob(pattern):
        regex = glob_regex(pattern)
        listed = FileSystems.match([_LITERAL_PREFIX.match(pattern)[0] + "**"])[0]
        paths = [m.path for m in listed.metadata_list if regex.match(m.path)]
    else:
        paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    return [p for p in paths if not p.startswith(tuple(exclude))]


def check_pattern(pattern: str, exclude: Sequence[str] = ()) -> None:
    """An --input pattern is a usable start: not a folder, and matching at least one file
    outside the run's own output; else InputError."""
    shown = printable(pattern)
    if not has_glob(pattern) and FileSystems.get_scheme(pattern) is None:
        if os.path.isdir(pattern):
            raise InputError(
                f"--input {shown} is a folder, not a file pattern; to label the files in it "
                f"pass '{shown.rstrip('/')}/**'"
            )
    try:
        # Beam's own match stops at the first file: quick on a big bucket. What it finds, '*'
        # stopping at '\' too, match_pattern finds as well; only if that is nothing usable is
        # the whole prefix listed.
        first = FileSystems.match([pattern], limits=[1])[0].metadata_list
        if first and not first[0].path.startswith(tuple(exclude)):
            return
        if match_pattern(pattern, exclude):
            return
    except Exception as e:  # unreachable bucket, bad credentials, ...
        raise InputError(f"--input {shown}: cannot list it ({error_line(e)})") from e
    outside = " outside the run's own --output folders" if exclude else ""
    raise InputError(f"--input {shown} matches no file{outside}; check the path and glob")


# --- Manifests -----------------------------------------------------------------------------


def manifest_kind(path: str) -> str:
    lowered = path.lower()
    if lowered.endswith(".parquet"):
        return "parquet"
    if lowered.endswith(".csv"):
        return "csv"
    return "text"


def is_listed(value: str | None) -> bool:
    """Blank values (None, empty, only whitespace) list nothing, in every manifest kind."""
    return bool(value) and not value.isspace()


def text_line(raw: bytes, first: bool) -> str:
    """A text manifest's line: UTF-8 (a byte-order mark at the start of the file ignored),
    its terminator ('\\n', or '\\r\\n') removed and nothing else."""
    line = raw.decode("utf-8-sig" if first else "utf-8")
    return line.removesuffix("\r\n") if line.endswith("\r\n") else line.removesuffix("\n")


def uris_from_text(lines: Iterable[str]) -> Iterator[str]:
    """Lines -> URIs: blank lines and lines starting with '#' are skipped, the rest kept."""
    for line in lines:
        if is_listed(line) and not line.startswith("#"):
            yield line


def _text_lines(f, path: str) -> Iterator[str]:
    for number, raw in enumerate(iter(f.readline, b""), start=1):
        try:
            yield text_line(raw, number == 1)
        except UnicodeDecodeError:
            raise InputError(
                f"--input_manifest {printable(path)} is not UTF-8 text (line {number}); "
                "save it as UTF-8"
            ) from None


def _csv_uris(f, path: str) -> Iterator[str]:
    text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader, [])
        if URI_COLUMN not in header:
            raise InputError(no_uri_column(path))
        column = header.index(URI_COLUMN)
        for row in reader:
            value = row[column] if column < len(row) else None
            if is_listed(value):
                yield value
    except UnicodeDecodeError:
        raise InputError(
            f"--input_manifest {printable(path)} is not UTF-8 text (near line "
            f"{reader.line_num + 1}); save it as UTF-8"
        ) from None
    except csv.Error as e:
        raise InputError(
            f"--input_manifest {printable(path)} is not a readable CSV file ({error_line(e)})"
        ) from None


def _parquet_uris(f, path: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(f)
        schema = parquet.schema_arrow
    except Exception as e:  # not Parquet, truncated, a corrupt footer
        raise InputError(
            f"--input_manifest {printable(path)} is not a readable Parquet file ({error_line(e)})"
        ) from None
    if URI_COLUMN not in schema.names:
        raise InputError(no_uri_column(path))
    kind = schema.field(URI_COLUMN).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputError(
            f"--input_manifest {printable(path)}: its '{URI_COLUMN}' column holds {kind}, "
            "not strings; write the image URIs as a string column"
        )
    try:
        for batch in parquet.iter_batches(columns=[URI_COLUMN], batch_size=65_536):
            yield from filter(is_listed, batch.column(0).to_pylist())
    except Exception as e:  # corrupt pages after a good footer
        raise InputError(
            f"--input_manifest {printable(path)} is not a readable Parquet file ({error_line(e)})"
        ) from None


def no_uri_column(path: str) -> str:
    return (
        f"--input_manifest {printable(path)} has no '{URI_COLUMN}' column; name the column "
        f"of image URIs '{URI_COLUMN}'"
    )


def manifest_uris(path: str) -> Iterator[str]:
    """Every URI a manifest lists, as written (normalize_uri comes after), any Beam
    filesystem; InputError naming the file for anything that makes it unusable.

    Text: one URI a line (see text_line, uris_from_text). CSV (.csv): the 'uri' column, UTF-8,
    a byte-order mark ignored. Parquet (.parquet): the 'uri' string column. Blank values are
    skipped in all three."""
    try:
        f = FileSystems.open(path)
    except IsADirectoryError:
        raise InputError(
            f"--input_manifest {printable(path)} is a folder; pass the manifest file"
        ) from None
    except FileNotFoundError:
        raise InputError(f"--input_manifest {printable(path)} does not exist") from None
    except Exception as e:  # no access, storage faults
        raise InputError(
            f"--input_manifest {printable(path)} cannot be read ({error_line(e)})"
        ) from None
    with f:
        kind = manifest_kind(path)
        if kind == "parquet":
            yield from _parquet_uris(f, path)
        elif kind == "csv":
            yield from _csv_uris(f, path)
        else:
            yield from uris_from_text(_text_lines(f, path))


def check_manifest(path: str) -> None:
    """Reads the whole manifest once, so that an unusable one stops the run at start-up with
    one line (InputError), never part-way; a manifest listing no URI is unusable too."""
    if not FileSystems.exists(path):
        raise InputError(f"--input_manifest {printable(path)} does not exist")
    if sum(1 for _ in manifest_uris(path)) == 0:  # every line read: all of it is checked
        raise InputError(f"--input_manifest {printable(path)} lists no URI")


# --- The Beam graph ------------------------------------------------------------------------


class ReadManifest(beam.PTransform):
    """A manifest file (text, .csv or .parquet with a 'uri' column) -> URIs, as listed."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, pipeline):
        return pipeline | beam.Create([self._path]) | beam.FlatMap(manifest_uris)


class ListInputs(beam.PTransform):
    """Patterns (Beam's glob syntax, ** allowed, see glob_regex) plus a manifest ->
    normalised URIs, duplicates included (KeepNew removes them). Pattern matches under the
    run's own output folders (`output`: ROOT/predictions, errors, _temp) are left out."""

    def __init__(
        self, patterns: Sequence[str], manifest: str | None = None, output: str | None = None
    ):
        super().__init__()
        self._patterns = list(patterns)
        self._manifest = manifest
        self._exclude = output_prefixes(output) if output else ()

    def expand(self, pipeline):
        sources = []
        if self._patterns:
            sources.append(
                pipeline
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> beam.FlatMap(match_pattern, exclude=self._exclude)
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
