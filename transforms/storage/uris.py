"""The one home of URI rules: what a URI names (a local path, a file: URI, a gs:// bucket and
object, another Beam filesystem) and the normal form an input is labelled under."""

from __future__ import annotations

import os
import re
import urllib.parse
import warnings
from collections.abc import Iterable

from apache_beam.io.filesystems import FileSystems

GCS = "gs://"

# RFC 8089: file:/path, file:///path or file://localhost/path (the forms Path.as_uri() and
# browsers write). Another host is left alone (it fails to read, as an error row).
_FILE_URI = re.compile(r"(?i:file):(?://(?i:localhost)?(?=/)|(?!//))(?P<path>/.*)", re.DOTALL)


def file_uri_path(uri: str) -> str | None:
    """The local path a file: URI names, percent-escapes decoded as bytes (so UTF-8 escapes
    give back the name Path.as_uri() encoded), or None if `uri` is not a local file: URI."""
    found = _FILE_URI.fullmatch(uri)
    if found is None:
        return None
    return os.fsdecode(urllib.parse.unquote_to_bytes(found["path"]))


def local_path(uri: str) -> str | None:
    """The local path a URI names (a plain path or a local file: URI), or None for other
    schemes."""
    if (path := file_uri_path(uri)) is not None:
        return path
    scheme, sep, _ = uri.partition("://")
    return uri if not sep or not scheme.isalnum() else None


def uri_for_path(path: str) -> str:
    """The URI a local path is labelled under: the path itself when its name is UTF-8 text,
    else (a name in another encoding, escaped by os.fsdecode) its file: URI, whose
    percent-escapes keep every byte, so the URI is text a Parquet string can hold and still
    names that one file (file_uri_path gives the path back)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "file://" + urllib.parse.quote_from_bytes(os.fsencode(path), safe="/")
    return path


def absolute_path(path: str) -> str:
    """os.path.abspath, and a leading '//' folded too (POSIX lets it mean something else;
    Linux and macOS, where this job runs, read it as '/')."""
    absolute = os.path.abspath(path)
    return "/" + absolute.lstrip("/") if absolute.startswith("//") else absolute


def normalize_uri(uri: str) -> str:
    """The URI an input is labelled under. Kept exactly as given (no whitespace stripped),
    except: a local file: URI becomes its path (see file_uri_path); a local path is made
    absolute (absolute_path, after a leading ~ is expanded), so a file named two ways
    ('//a/b', '/a//b', '/a/./b') is labelled once; a path that is not UTF-8 text is then
    written as its file: URI (uri_for_path). Other schemes (gs://, ...) are kept as given."""
    local = file_uri_path(uri)
    if local is not None:
        return uri_for_path(absolute_path(local))
    if FileSystems.get_scheme(uri) is not None:  # gs://, http://, file://otherhost/...
        return uri
    return uri_for_path(absolute_path(os.path.expanduser(uri)))


_GLOB_CHARACTER = re.compile(r"([\[*?])")
# Beam turns the class '[[]' into the regex '[[]', which means '[' and is valid, but Python
# warns that a later version may read it as a nested set: not a user's concern, kept off stderr.
warnings.filterwarnings("ignore", "Possible nested set", FutureWarning)


def glob_escape(path: str) -> str:
    """A pattern that matches exactly `path` in Beam's glob syntax (FileSystems.match, and
    FileSystems.delete, which matches first): '[', '*' and '?' each become a one-character
    class, so an --output named 'o[1]' is itself and not 'o1'."""
    return _GLOB_CHARACTER.sub(r"[\1]", path)


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS)


def split_gcs(uri: str) -> tuple[str, str]:
    """gs://bucket/a/b.jpg -> ("bucket", "a/b.jpg")."""
    bucket, _, name = uri.removeprefix(GCS).partition("/")
    return bucket, name


def gcs_buckets(uris: Iterable[str | None]) -> list[str]:
    """The distinct buckets of the gs:// URIs among `uris`, sorted."""
    return sorted({split_gcs(u)[0] for u in uris if u and is_gcs(u)})


def is_remote_file_uri(uri: str) -> bool:
    """A Beam filesystem path other than the local disk (gs://, s3://, ...)."""
    return FileSystems.get_scheme(uri) not in (None, "file", "http", "https")


def is_web_url(uri: str) -> bool:
    """An http(s) URL (a TF Hub handle)."""
    return FileSystems.get_scheme(uri) in ("http", "https")
