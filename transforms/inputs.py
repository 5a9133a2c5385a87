"""The first stage: file patterns and manifests -> the distinct image URIs to label; also the
one home of what a pattern or a manifest may hold (config runs the same readers as start-up
checks)."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from transforms import metrics
from transforms.output import Versions, output_prefixes
from transforms.printable import error_line, printable
from transforms.storage import gcs
from transforms.storage.listing import (
    Listed,
    Work,
    as_work,
    content_key,
    describe_local,
    from_metadata,
)
from transforms.storage.local import StreamError, file_kind, read_stream
from transforms.storage.uris import is_gcs, local_path, normalize_uri, split_gcs, uri_for_path

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


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC


def list_local(top: str) -> Iterator[str]:
    """Every name under the local folder `top`, at any depth, that is not a folder: files,
    and also what a read will refuse with an error row naming it (a dangling link, a FIFO, a
    path longer than PATH_MAX); nothing `top` holds is left out. Names are sorted within a
    folder; names that are not UTF-8 come as os.fsdecode gives them (see uri_for_path).

    Folders are opened relative to their parent's descriptor, so depth has no limit. A link
    to a folder is followed, but every folder (by device and inode) is listed once only: a
    link loop ends, and a folder reached by two names is listed under the first; folders
    reached without a link come first, so a file has its real path where it has one. A
    folder that cannot be opened or listed is itself listed, so its read fails in a row."""
    seen: set[tuple[int, int]] = set()
    links: list[str] = []  # links to folders, followed once the real folders are listed
    roots = [top]
    while roots:
        root = roots.pop(0)
        try:
            fd = os.open(root, _FOLDER)
        except OSError:
            if root != top:
                yield root  # a link whose folder cannot be opened: its read says why
            continue
        yield from _walk_folder(fd, root, seen, links)
        roots += links
        links.clear()


def _walk_folder(fd: int, path: str, seen: set, links: list[str]) -> Iterator[str]:
    """list_local's depth-first walk from one open folder (closed here); at most one open
    descriptor per level."""
    stack: list[tuple[int, str, Iterator[str]]] = []
    while True:
        if fd >= 0:
            subfolders = yield from _list_folder(fd, path, seen, links)
            if subfolders:
                stack.append((fd, path, iter(subfolders)))
            else:
                os.close(fd)
            fd = -1
        if not stack:
            return
        parent_fd, parent, names = stack[-1]
        name = next(names, None)
        if name is None:
            os.close(parent_fd)
            stack.pop()
            continue
        path = os.path.join(parent, name)
        try:
            fd = os.open(name, _FOLDER | os.O_NOFOLLOW, dir_fd=parent_fd)
        except OSError:
            yield path  # gone, no access, too many open: its read names the failure


def _list_folder(fd: int, path: str, seen: set, links: list[str]):
    """Yields the names in one folder that are not folders; returns its subfolders' names
    (empty if the folder was listed before or cannot be listed)."""
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in seen:
            return []
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        yield path
        return []
    subfolders = []
    for entry in entries:
        full = os.path.join(path, entry.name)
        try:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.name)
                continue
            if entry.is_symlink() and entry.is_dir():
                links.append(full)
                continue
        except OSError:
            pass
        yield full
    return subfolders


def match_pattern(pattern: str, exclude: Sequence[str] = ()) -> list[str]:
    """URIs of the files `pattern` matches (any Beam filesystem), except those starting with
    one of `exclude` (the run's own output). A pattern without glob characters names one file.

    Globs list everything under the pattern's literal prefix (list_local on the local disk,
    elsewhere Beam's '**', the listing Beam's own match makes) and keep what glob_regex
    accepts. Local names come as uri_for_path writes them."""
    if has_glob(pattern):
        regex = glob_regex(pattern)
        prefix = _LITERAL_PREFIX.match(pattern)[0]
        if FileSystems.get_scheme(pattern) is None:
            top = prefix if prefix.endswith("/") else os.path.dirname(prefix)
            paths = [p for p in list_local(top or "/") if regex.match(p)]
        else:
            listed = FileSystems.match([prefix + "**"])[0]
            paths = [m.path for m in listed.metadata_list if regex.match(m.path)]
    else:
        paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    return [uri_for_path(p) for p in paths if not p.startswith(tuple(exclude))]


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


def list_pattern(
    pattern: str, exclude: Sequence[str] = (), gcs_options: Mapping | None = None
) -> Iterator[Listed]:
    """The inputs a pattern matches (see match_pattern), each with what its listing says of
    it: a gs:// glob from the storage API's object listing (generation, size and checksums
    of 1,000 objects a request), anything else from match_pattern and describe()."""
    if is_gcs(pattern) and has_glob(pattern):
        regex = glob_regex(pattern)
        prefix = _LITERAL_PREFIX.match(pattern)[0]
        for item in gcs.list_objects(prefix, gcs_options):
            metrics.count_listed()
            if regex.match(item.uri) and not item.uri.startswith(tuple(exclude)):
                yield item
        return
    client = Clients(gcs_options)
    for uri in match_pattern(pattern, exclude):  # already normal: the pattern was normalised
        yield describe(uri, client)


class Clients:
    """The storage client describe() uses for gs:// objects, made on first need."""

    def __init__(self, gcs_options: Mapping | None):
        self._options = gcs_options
        self._gcs = None

    def gcs(self):
        if self._gcs is None:
            self._gcs = gcs.access(self._options).client
        return self._gcs


def describe(uri: str, clients: Clients) -> Listed:
    """One input by its URI, as a listing would give it (storage/listing.py): a local file's
    stat, a gs:// object's metadata (one request), another filesystem's match. What cannot
    be described (gone, no access) is listed without a version: its read says why."""
    path = local_path(uri)
    if path is not None:
        return dataclasses.replace(describe_local(path), uri=uri)
    try:
        if is_gcs(uri):
            bucket, name = split_gcs(uri)
            blob = clients.gcs().bucket(bucket).get_blob(name) if name else None
            return Listed(uri) if blob is None else gcs.listed_blob(bucket, blob)
        found = FileSystems.match([uri], limits=[1])[0].metadata_list
    except Exception:  # no access, an unreachable store: the read fails in a row
        return Listed(uri)
    return dataclasses.replace(from_metadata(found[0]), uri=uri) if found else Listed(uri)


class Describe(beam.DoFn):
    """A manifest's URI -> Listed (describe), the storage client made in setup()."""

    def __init__(self, gcs_options: Mapping | None):
        self._options = gcs_options

    def setup(self):
        self._clients = Clients(self._options)

    def process(self, uri: str):
        yield describe(uri, self._clients)


# --- Manifests -----------------------------------------------------------------------------

# The longest URI a manifest may list. The longest real ones: a local path of PATH_MAX (4,096
# bytes) written as a file: URI with every byte percent-escaped (12,295 bytes), a gs:// object
# name (1,024 bytes) in a 222-byte bucket; 16 KiB is above all of them, so a longer line is
# not a URI, and it is refused having read no more of it than this.
MAX_URI_BYTES = 16 << 10
MAX_CSV_LINE_BYTES = 1 << 20  # a CSV row may carry other columns beside its URI
MAX_MANIFEST_BYTES = 4 << 30  # a manifest file (read as a stream, never whole in memory)
# A pipe, FIFO or terminal (--input_manifest /dev/stdin) can be read only once: it is read
# whole at start-up, into memory (64 MiB: about 600,000 URIs), and the job lists from that
# copy; waiting for it ends after STREAM_IDLE_SECONDS without a byte (a FIFO no one writes).
MAX_STREAMED_MANIFEST_BYTES = 64 << 20
STREAM_IDLE_SECONDS = 30.0
_STREAMED: dict[str, bytes] = {}  # path -> what the one read of a stream gave


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


def bounded_lines(f, path: str, max_bytes: int) -> Iterator[bytes]:
    """A binary file's lines, terminators kept; InputError for a line of more than max_bytes
    (terminator aside), having read at most max_bytes + 2 bytes of it."""
    for number, raw in enumerate(iter(lambda: f.readline(max_bytes + 2), b""), start=1):
        if len(raw.removesuffix(b"\n").removesuffix(b"\r")) > max_bytes:
            raise InputError(
                f"--input_manifest {printable(path)}: line {number} is longer than "
                f"{max_bytes:,} bytes, longer than any URI; is it a manifest?"
            )
        yield raw


def _text_lines(f, path: str) -> Iterator[str]:
    for number, raw in enumerate(bounded_lines(f, path, MAX_URI_BYTES), start=1):
        try:
            yield text_line(raw, number == 1)
        except UnicodeDecodeError:
            raise InputError(
                f"--input_manifest {printable(path)} is not UTF-8 text (line {number}); "
                "save it as UTF-8"
            ) from None


def _csv_uris(f, path: str) -> Iterator[str]:
    lines = bounded_lines(f, path, MAX_CSV_LINE_BYTES)
    reader = csv.reader(
        line.decode("utf-8-sig" if i == 0 else "utf-8") for i, line in enumerate(lines)
    )
    try:
        header = next(reader, [])
        if URI_COLUMN not in header:
            raise InputError(no_uri_column(path))
        column = header.index(URI_COLUMN)
        for row in reader:
            value = row[column] if column < len(row) else None
            if is_listed(value):
                yield check_length(value, path)
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
            for value in filter(is_listed, batch.column(0).to_pylist()):
                yield check_length(value, path)
    except InputError:
        raise
    except Exception as e:  # corrupt pages after a good footer
        raise InputError(
            f"--input_manifest {printable(path)} is not a readable Parquet file ({error_line(e)})"
        ) from None


def check_length(value: str, path: str) -> str:
    """A manifest's value, if it is no longer than a URI can be; else InputError."""
    if len(value.encode("utf-8", "surrogatepass")) > MAX_URI_BYTES:
        raise InputError(
            f"--input_manifest {printable(path)} lists a value longer than {MAX_URI_BYTES:,} "
            f"bytes, longer than any URI ({printable(value[:40])}...)"
        )
    return value


def no_uri_column(path: str) -> str:
    return (
        f"--input_manifest {printable(path)} has no '{URI_COLUMN}' column; name the column "
        f"of image URIs '{URI_COLUMN}'"
    )


def open_manifest(path: str):
    """A binary file object for a manifest: any Beam filesystem; on local disk a regular file
    of at most MAX_MANIFEST_BYTES, or a pipe, FIFO or terminal read once (read_streamed).
    InputError for a block device, a socket or a file over the limit; OSError as raised."""
    if path in _STREAMED:
        return io.BytesIO(_STREAMED[path])
    local = local_path(path)
    if local is None:
        return FileSystems.open(path)
    fd = os.open(local, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # never blocks
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(local)
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            return io.BytesIO(read_streamed(path, fd))
        kind = file_kind(mode)
        if kind is not None:
            raise InputError(f"--input_manifest {printable(path)} is {kind}; pass a file")
        size = os.fstat(fd).st_size
        if size > MAX_MANIFEST_BYTES:
            raise InputError(
                f"--input_manifest {printable(path)} is {size:,} bytes, more than the limit "
                f"of {MAX_MANIFEST_BYTES:,}; split it into several runs"
            )
        os.set_blocking(fd, True)
        f, fd = open(fd, "rb"), -1
        return f
    finally:
        if fd >= 0:
            os.close(fd)


def read_streamed(path: str, fd: int) -> bytes:
    """A pipe, FIFO or terminal's bytes, read once (read_stream's bounds) and kept, so the
    start-up check and the job read the same copy; InputError if it cannot be read whole."""
    try:
        _STREAMED[path] = read_stream(fd, MAX_STREAMED_MANIFEST_BYTES, STREAM_IDLE_SECONDS)
    except StreamError as e:
        raise InputError(
            f"--input_manifest {printable(path)} is a pipe that {e}, read once at start-up; "
            "write the URIs to a file and pass that"
        ) from None
    return _STREAMED[path]


def is_streamed(path: str) -> bool:
    """Whether the manifest is a pipe, FIFO or terminal (read once, at start-up)."""
    if path in _STREAMED:
        return True
    local = local_path(path)
    try:
        mode = os.stat(local).st_mode if local is not None else 0
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def manifest_uris(path: str) -> Iterator[str]:
    """Every URI a manifest lists, as written (normalize_uri comes after), any Beam
    filesystem; InputError naming the file for anything that makes it unusable.

    Text: one URI a line (see text_line, uris_from_text). CSV (.csv): the 'uri' column, UTF-8,
    a byte-order mark ignored. Parquet (.parquet): the 'uri' string column. Blank values are
    skipped in all three."""
    try:
        f = open_manifest(path)
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
        if is_streamed(self._path):  # read once, here: its URIs travel with the graph
            return pipeline | beam.Create(list(manifest_uris(self._path)))
        return pipeline | beam.Create([self._path]) | beam.FlatMap(manifest_uris)


class ListInputs(beam.PTransform):
    """Patterns (Beam's glob syntax, ** allowed, see glob_regex) plus a manifest -> Listed
    inputs under their normalised URIs, duplicates included (KeepNew removes them). Pattern
    matches under the run's own output folders (`output`: ROOT/predictions, errors, _temp)
    are left out."""

    def __init__(
        self,
        patterns: Sequence[str],
        manifest: str | None = None,
        output: str | None = None,
        gcs_options: Mapping | None = None,
    ):
        super().__init__()
        self._patterns = list(patterns)
        self._manifest = manifest
        self._exclude = output_prefixes(output) if output else ()
        self._gcs_options = gcs_options

    def expand(self, pipeline):
        sources = []
        if self._patterns:
            sources.append(
                pipeline
                | "Patterns" >> beam.Create(self._patterns)
                | "List" >> beam.FlatMap(list_pattern, self._exclude, self._gcs_options)
            )
        if self._manifest:
            sources.append(
                pipeline
                | "Manifest" >> ReadManifest(self._manifest)
                | "Normalize" >> beam.Map(normalize_uri)
                | "Describe" >> beam.ParDo(Describe(self._gcs_options))
            )
        return sources | "AllSources" >> beam.Flatten(pipeline=pipeline.pipeline)


# --- What is done --------------------------------------------------------------------------

NEW, CHANGED, DONE = "new", "changed", "done"


def verdict(item: Listed, done: Iterable[Versions], model_version: str) -> str:
    """Whether an input is to be labelled, from the (source_version, model_version) of the
    rows the output already has for its URI: DONE when one has the same source and model
    version (None, in rows written before rows carried versions, matches any); CHANGED when
    the same model labelled another version of it; else NEW."""
    rows = list(done)
    for source, model in rows:
        if source in (None, item.version) and model in (None, model_version):
            return DONE
    return CHANGED if any(model == model_version for _, model in rows) else NEW


def new_items(grouped: tuple[str, dict[str, Iterable]], model_version: str) -> Iterator[Listed]:
    """(uri, {"wanted": [Listed...], "done": [Versions...]}) -> the input once if wanted and
    not done (see verdict), counted."""
    _, sides = grouped
    item = next(iter(sides["wanted"]), None)
    if item is None:
        return
    found = verdict(item, sides["done"], model_version)
    if found == DONE:
        metrics.images_skipped.inc()
        return
    if found == CHANGED:
        metrics.images_changed.inc()
    metrics.count_queued()
    yield item


def to_work(key: str, items: Iterable[Listed]) -> Work:
    """The inputs of one content key -> one work unit; all but one are served by its read."""
    work = as_work(items)
    metrics.images_identical.inc(len(work) - 1)
    return work


class KeepNew(beam.PTransform):
    """(wanted Listed inputs, done (uri, Versions)) -> work units: each wanted input once,
    unless it is done (see verdict), inputs of identical content together (content_key).

    One CoGroupByKey does both the de-duplication and the skip, on URIs and versions; one
    GroupByKey then joins identical content: decoded pixels never cross a shuffle.
    """

    def __init__(self, model_version: str):
        super().__init__()
        self._model_version = model_version

    def expand(self, pcolls):
        wanted, done = pcolls
        return (
            {
                "wanted": wanted | "KeyWanted" >> beam.Map(lambda item: (item.uri, item)),
                "done": done,
            }
            | "ByUri" >> beam.CoGroupByKey()
            | "New" >> beam.FlatMap(new_items, self._model_version)
            | "KeyContent" >> beam.Map(lambda item: (content_key(item), item))
            | "ByContent" >> beam.GroupByKey()
            | "Work" >> beam.MapTuple(to_work)
        )
