"""gs:// for the job, on one credentials path: the job's PipelineOptions made into the storage
client Beam's GcsIO would make (credentials, project, headers), for the reads (feed.py), the
start-up bucket check (pipeline/config.py) and listings.

Reads are one GET of an object's media on libcurl (curl_get.py), not the storage client's
download: under 32 reads in flight that cost 2.5 ms of CPU per object, most of it in
requests' per-request machinery under the GIL, several times this reader's
(docs/performance.md). tests/test_gcs_contract.py holds the reader to the client's
download_as_bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import urllib.parse
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from transforms import vocabulary as v
from transforms.storage.bounded import ByteBudget, too_large
from transforms.storage.listing import Listed
from transforms.storage.retries import ChecksumMismatch, with_retries
from transforms.storage.uris import gcs_buckets, split_gcs

if TYPE_CHECKING:
    from transforms.storage.curl_get import Reply

TIMEOUT_S = 60  # connect and read, as the storage client's default
ERROR_BODY_BYTES = 64 << 10  # the most of an error reply kept for its message
CHECK_SECONDS = 10.0  # the bucket check retries transient faults this long
PAGE_SIZE = 1000  # objects per listing request (the JSON API's most)
LIST_FIELDS = "items(name,generation,size,md5Hash,crc32c),nextPageToken"
ADC_HINT = (
    "use Application Default Credentials that can read it (gcloud auth "
    "application-default login, or GOOGLE_APPLICATION_CREDENTIALS)"
)


class BadGzip(Exception):
    """An object stored with Content-Encoding: gzip whose bytes are not gzip data."""


class BucketError(ValueError):
    """A bucket the job names cannot be used; the message is one line for the user."""


def job_options(options: Any) -> dict:
    """The options set for the job (PipelineOptions.get_all_options, defaults dropped): a
    plain dict, so it travels to the workers inside a DoFn; access() takes it back."""
    return options.get_all_options(drop_default=True)


def pipeline_options(options: Any) -> Any:
    """PipelineOptions from a job_options() dict (or PipelineOptions, as they are)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    if isinstance(options, PipelineOptions):
        return options
    return PipelineOptions([], **dict(options or {}))


@dataclasses.dataclass(frozen=True)
class Access:
    """The job's way into Cloud Storage: a storage client set up as Beam's
    create_storage_client sets it up, and what a plain HTTP request needs to act the same
    (its credentials and headers)."""

    client: Any  # google.cloud.storage.Client
    credentials: Any  # google.auth credentials (AnonymousCredentials when there are none)
    headers: dict[str, str]
    anonymous: bool


def access(options: Mapping | Any) -> Access:
    """The job's Access, from its options as Beam's create_storage_client reads them: the
    credentials of apache_beam.internal.gcp.auth (Application Default Credentials, with
    --impersonate_service_account; none found: anonymous), --project, Beam's user agent and
    the audit headers (x-goog-custom-audit-job from --job_name, --gcs_custom_audit_entries).
    Built here rather than taken from Beam's client so that nothing private of the client is
    read: tests/test_gcs_reads.py checks the two clients agree."""
    from apache_beam import version as beam_version
    from apache_beam.internal.gcp import auth
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from google.api_core.client_info import ClientInfo
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    options = pipeline_options(options)
    found = auth.get_service_credentials(options)
    if found is None:  # as storage.Client.create_anonymous_client(), our ClientInfo kept
        info = ClientInfo()
        credentials = AnonymousCredentials()
        client = storage.Client(project="<none>", credentials=credentials, client_info=info)
        client.project = None
        extra: dict[str, str] = {}
    else:
        cloud = options.view_as(GoogleCloudOptions)
        info = ClientInfo(user_agent=f"apache-beam/{beam_version.__version__} (GPN:Beam)")
        extra = {"x-goog-custom-audit-job": cloud.job_name or "UNKNOWN"}
        extra.update(cloud.gcs_custom_audit_entries or {})
        credentials = found.get_google_auth_credentials()
        client = storage.Client(
            credentials=credentials,
            project=cloud.project,
            client_info=info,
            extra_headers=extra,
        )
    # The client's connection completes the ClientInfo it was given (library versions), so
    # this is the user agent the client itself sends.
    agent = info.to_user_agent()
    headers = {**extra, "User-Agent": agent}
    return Access(client, credentials, headers, anonymous=found is None)


def check_buckets(uris: Iterable[str | None], options: Mapping | Any) -> None:
    """Every gs:// bucket among `uris` can be listed with the job's credentials (the ones
    the reads use), else BucketError, one line naming the bucket."""
    buckets = gcs_buckets(uris)
    if not buckets:
        return
    import google.auth.transport.requests
    from google.api_core import exceptions
    from google.cloud.storage.retry import DEFAULT_RETRY

    try:
        job = access(options)
        if job.anonymous and os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
            # Named explicitly but unusable: say so rather than go on anonymously.
            raise ValueError(
                f"GOOGLE_APPLICATION_CREDENTIALS={os.environ['GOOGLE_APPLICATION_CREDENTIALS']}"
                " gives no credentials"
            )
        if not job.anonymous:  # a refused key or token shows here, not as a listing fault
            job.credentials.refresh(google.auth.transport.requests.Request())
    except Exception as e:  # a bad key file, a refused token, no network
        raise BucketError(
            f"gs://{buckets[0]}: the credentials do not work ({e}); {ADC_HINT}"
        ) from None
    retry = DEFAULT_RETRY.with_timeout(CHECK_SECONDS)
    for bucket in buckets:
        try:
            list(job.client.list_blobs(bucket, max_results=1, retry=retry, timeout=5))
        except exceptions.NotFound:
            raise BucketError(f"bucket gs://{bucket} does not exist") from None
        except (exceptions.Forbidden, exceptions.Unauthorized) as e:
            raise BucketError(f"no access to gs://{bucket} ({e.message}); {ADC_HINT}") from None
        except Exception as e:  # unreachable after retries
            raise BucketError(f"cannot reach gs://{bucket} ({type(e).__name__}: {e})") from None


def list_objects(prefix_uri: str, options: Mapping | Any) -> Iterator[Listed]:
    """The objects under gs://bucket/prefix, in name order, with the job's credentials:
    PAGE_SIZE a request, only the fields a Listed needs. A folder placeholder (a zero-byte
    object whose name ends in '/', as the Cloud Console's "Create folder" makes) is not
    content, as a local folder is not: it is left out."""
    bucket, prefix = split_gcs(prefix_uri)
    blobs = access(options).client.list_blobs(
        bucket, prefix=prefix or None, page_size=PAGE_SIZE, fields=LIST_FIELDS
    )
    for blob in blobs:
        if not is_folder_placeholder(blob.name, blob.size):
            yield listed_blob(bucket, blob)


def is_folder_placeholder(name: str, size: int | str | None) -> bool:
    return name.endswith("/") and size is not None and int(size) == 0


def listed_blob(bucket: str, blob: Any) -> Listed:
    """A Blob of a listing as a Listed: version its generation, checksum its crc32c, else
    its md5, else none."""
    if blob.crc32c:
        checksum = f"crc32c:{blob.crc32c}"
    elif blob.md5_hash:
        checksum = f"md5:{blob.md5_hash}"
    else:
        checksum = ""
    size = -1 if blob.size is None else int(blob.size)
    version = "" if blob.generation is None else str(blob.generation)
    return Listed(f"gs://{bucket}/{blob.name}", size, version, checksum)


def media_url(endpoint: str, uri: str) -> str:
    """The JSON API's media download URL of a gs:// object."""
    bucket, name = (urllib.parse.quote(part, safe="") for part in split_gcs(uri))
    return f"{endpoint}/download/storage/v1/b/{bucket}/o/{name}?alt=media"


def check_hash(x_goog_hash: str | None, data: bytes, uri: str) -> None:
    """Checks data against the x-goog-hash header (crc32c, else md5); no header, no check
    (as the storage client does)."""
    import google_crc32c

    sums = dict(
        part.strip().split("=", 1) for part in (x_goog_hash or "").split(",") if "=" in part
    )
    if "crc32c" in sums:
        got = google_crc32c.value(data).to_bytes(4, "big")
        name = "crc32c"
    elif "md5" in sums:
        got = hashlib.md5(data).digest()
        name = "md5"
    else:
        return
    if base64.b64encode(got).decode() != sums[name]:
        raise ChecksumMismatch(f"{uri}: {name} of the {len(data):,} bytes read does not match")


def gunzip_at_most(data: bytes, max_bytes: int, uri: str) -> bytes:
    """The content of gzip `data`, every member, as the storage client's download gives it
    (urllib3's decoder: bytes after the first member that are not gzip are ignored); past
    max_bytes it stops and raises too large, having inflated at most max_bytes + 1 bytes."""
    parts: list[bytes] = []
    total, rest, first = 0, data, True
    while rest:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            parts.append(inflate.decompress(rest, max_bytes + 1 - total))
        except zlib.error as e:
            if first:
                raise BadGzip(f"{uri}: stored as gzip, but its bytes are not ({e})") from None
            break  # trailing bytes that are not gzip
        total += len(parts[-1])
        if total > max_bytes:
            raise v.ImageError(
                v.TOO_LARGE,
                f"{uri} inflates to more than the limit of {max_bytes:,} bytes "
                f"(--max_object_mb) from {len(data):,} stored as gzip",
            )
        if not inflate.eof:
            raise BadGzip(f"{uri}: its gzip data ends early ({len(data):,} bytes stored)")
        rest, first = inflate.unused_data, False
    return parts[0] if len(parts) == 1 else b"".join(parts)


class GcsReader:
    """Reads gs:// objects whole and bounded, as the job: the credentials, endpoint and
    headers of access(options), on libcurl (curl_get.py), retried as retries.py says."""

    def __init__(self, options: Mapping | Any = None):
        import google.auth.transport.requests

        # Loaded with the first gs:// read, as google-auth is: a local run never loads libcurl.
        from transforms.storage.curl_get import Getter, environment_route

        job = access(options)
        self.endpoint = job.client.api_endpoint
        # Kept for a test: impersonation, seen on a request instead, would need Google's IAM API.
        self.credentials = job.credentials
        self._refreshable = not job.anonymous
        # Accept-Encoding: the bytes as stored, which the checksums are of (gzip inflated here).
        self.headers = {**job.headers, "Accept-Encoding": "gzip"}
        self._getter = Getter(environment_route(self.endpoint), TIMEOUT_S)
        self._auth = google.auth.transport.requests.Request()  # what refreshes a token

    def read(self, uri: str, max_bytes: int, unknown_size: int, budget: ByteBudget) -> bytes:
        """The object's bytes, as the storage client's download_as_bytes gives them (one
        stored with Content-Encoding: gzip inflated, at most max_bytes of it); on return
        len(result) bytes are held in `budget`.

        One request: an object whose announced size is above max_bytes is refused from the
        headers, no more of its body read than libcurl's first chunk (16 KB); one whose size
        is not announced holds `unknown_size` bytes until read. A body shorter than its
        Content-Length raises ShortBody, bytes that do not match the stored checksum
        ChecksumMismatch; those and other transient faults are tried again
        (retries.with_retries); 404 raises NotFound and 403 Forbidden
        (google.api_core.exceptions), at once. A 401 refreshes the token and asks once more.
        """
        return with_retries(lambda: self._attempt(uri, max_bytes, unknown_size, budget))

    def _attempt(self, uri: str, max_bytes: int, unknown_size: int, budget: ByteBudget):
        held = 0  # bytes of the budget this attempt holds

        def body_limit(status: int, headers: dict[str, str]) -> int:
            nonlocal held
            if status != 200:
                return ERROR_BODY_BYTES  # the start of an error reply, for its message
            announced = headers.get("content-length")
            expected = int(announced) if announced is not None else min(unknown_size, max_bytes)
            if announced is not None and expected > max_bytes:
                raise too_large(uri, expected, max_bytes)
            budget.acquire(expected)
            held = expected
            return max_bytes

        try:
            reply = self._get(uri, body_limit)
            if reply.status != 200:
                from google.api_core import exceptions

                detail = reply.body[:ERROR_BODY_BYTES].decode("utf-8", "replace").strip()
                raise exceptions.from_http_status(
                    reply.status, f"GET {uri}: {reply.status} {detail[:500]}"
                )
            data = reply.body
            if len(data) > max_bytes:
                raise too_large(uri, min(len(data), max_bytes + 1), max_bytes)
            check_hash(reply.headers.get("x-goog-hash"), data, uri)
            if reply.headers.get("content-encoding", "").strip().lower() == "gzip":
                data = gunzip_at_most(data, max_bytes, uri)
        except BaseException:
            budget.release(held)
            raise
        budget.resize(held, len(data))
        return data

    def _get(self, uri: str, body_limit) -> Reply:
        """GET the object's media as the job; after a 401, once more with a refreshed token
        (as google-auth's own transports do)."""
        url = media_url(self.endpoint, uri)
        reply = self._getter.get(url, self._signed(url), body_limit, uri)
        if reply.status == 401 and self._refreshable:
            self.credentials.refresh(self._auth)
            reply = self._getter.get(url, self._signed(url), body_limit, uri)
        return reply

    def _signed(self, url: str) -> dict[str, str]:
        """The job's headers and its credentials' (a token refreshed first if it expired)."""
        headers = dict(self.headers)
        self.credentials.before_request(self._auth, "GET", url, headers)
        return headers
