"""The first stage: file patterns (listed here) and a manifest (transforms/manifests.py) ->
the inputs as listed; also the one home of what a pattern may match (config runs the same
check at start-up)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from transforms import metrics
from transforms.manifests import InputError, ReadManifest, manifest_uris
from transforms.printable import error_line, printable
from transforms.storage import gcs
from transforms.storage.layout import output_prefixes
from transforms.storage.listing import (
    Listed,
    describe_local,
    from_metadata,
)
from transforms.storage.uris import is_gcs, local_path, normalize_uri, split_gcs, uri_for_path

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


def match_pattern(pattern: str, exclude: Sequence[str] = ()) -> Iterator[str]:
    """URIs of the files `pattern` matches (any Beam filesystem), except those starting with
    one of `exclude` (the run's own output). A pattern without glob characters names one file.

    Globs list everything under the pattern's literal prefix (list_local on the local disk,
    elsewhere Beam's '**', the listing Beam's own match makes) and keep what glob_regex
    accepts. Local names come as uri_for_path writes them, as the walk finds them: a local
    listing is never held whole in memory."""
    if has_glob(pattern):
        regex = glob_regex(pattern)
        prefix = _LITERAL_PREFIX.match(pattern)[0]
        if FileSystems.get_scheme(pattern) is None:
            top = prefix if prefix.endswith("/") else os.path.dirname(prefix)
            paths = (p for p in list_local(top or "/") if regex.match(p))
        else:
            listed = FileSystems.match([prefix + "**"])[0]
            paths = (m.path for m in listed.metadata_list if regex.match(m.path))
    else:
        paths = (m.path for m in FileSystems.match([pattern])[0].metadata_list)
    skip = tuple(exclude)
    return (uri_for_path(p) for p in paths if not p.startswith(skip))


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
        if next(match_pattern(pattern, exclude), None) is not None:
            return
    except Exception as e:  # unreachable bucket, bad credentials, ...
        raise InputError(f"--input {shown}: cannot list it ({error_line(e)})") from e
    missing = missing_folder(pattern)
    if missing is not None:
        path, closest = (printable(p) for p in missing)
        what = f"--input {shown}" if path == shown else f"--input {shown}: the folder {path}"
        raise InputError(f"{what} does not exist; the closest folder that does is {closest}")
    outside = " outside the run's own --output folders" if exclude else ""
    raise InputError(f"--input {shown} matches no file{outside}; check the path and glob")


def missing_folder(pattern: str) -> tuple[str, str] | None:
    """For a local pattern whose fixed part (up to its first glob character) names a folder,
    or for a path without glob, that does not exist: (that path, the closest folder above it
    that exists); None otherwise (other filesystems have no folders to name)."""
    local = local_path(pattern)
    if local is None:
        return None
    fixed = _LITERAL_PREFIX.match(local)[0]
    path = fixed if fixed == local else os.path.dirname(fixed)
    if os.path.lexists(path):
        return None
    closest = os.path.dirname(path)
    while not os.path.isdir(closest):
        closest = os.path.dirname(closest)
    return path, closest


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


def list_inputs(
    patterns: Sequence[str],
    manifest: str | None,
    output: str,
    gcs_options: Mapping | None = None,
    streamed: bytes | None = None,
) -> Iterator[Listed]:
    """What ListInputs gives, listed in this process (--plan, a run's driver): each pattern's
    matches outside the run's output, then the manifest's URIs, normalised and described."""
    exclude = output_prefixes(output)
    for pattern in patterns:
        yield from list_pattern(pattern, exclude, gcs_options)
    if manifest:
        clients = Clients(gcs_options)
        for uri in manifest_uris(manifest, streamed):
            yield describe(normalize_uri(uri), clients)


# --- The Beam graph ---


class ListInputs(beam.PTransform):
    """Patterns (Beam's glob syntax, ** allowed, see glob_regex) plus a manifest -> Listed
    inputs under their normalised URIs, duplicates included (transforms/done.py removes them).
    `streamed`: start-up's copy of a manifest that is a pipe (manifests.check_manifest). Pattern
    matches under the run's own output folders (`output`: ROOT/predictions, errors, _temp)
    are left out."""

    def __init__(
        self,
        patterns: Sequence[str],
        manifest: str | None = None,
        output: str | None = None,
        gcs_options: Mapping | None = None,
        streamed: bytes | None = None,
    ):
        super().__init__()
        self._patterns = list(patterns)
        self._manifest = manifest
        self._streamed = streamed
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
                | "Manifest" >> ReadManifest(self._manifest, self._streamed)
                | "Normalize" >> beam.Map(normalize_uri)
                | "Describe" >> beam.ParDo(Describe(self._gcs_options))
            )
        return sources | "AllSources" >> beam.Flatten(pipeline=pipeline.pipeline)
