"""gs:// reads for feed.py: each object in one GET of its media, on google-auth's urllib3
transport, with the credentials, endpoint and retry policy of Beam's own storage client.

Why not the storage client's download: under 32 reads in flight it cost 2.5 ms of CPU per
object, most of it in requests' per-request machinery under the GIL, against 0.9 ms here
(benchmark machine): more than a decode of a 500x375 photo, paid on the decoding cores.
"""

from __future__ import annotations

import base64
import hashlib
import os
import urllib.parse
import urllib.request
from typing import Any

from transforms.storage.bounded import ByteBudget, read_at_most, too_large
from transforms.storage.uris import split_gcs

TIMEOUT_S = 60  # connect and read, as the storage client's default
ERROR_BODY_BYTES = 64 << 10  # the most of an error reply kept for its message


class ChecksumMismatch(Exception):
    """The bytes received do not match the object's stored checksum (not retried, as by
    the storage client)."""


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


def environment_pool(endpoint: str, size: int) -> Any:
    """A urllib3 pool of `size` connections per host, set up as requests would be from the
    environment for this endpoint: its proxy (unless NO_PROXY bypasses it) and CA bundle
    (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE or certifi's)."""
    import certifi
    import urllib3

    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    settings = dict(maxsize=size, ca_certs=bundle or certifi.where(), cert_reqs="CERT_REQUIRED")
    parts = urllib.parse.urlsplit(endpoint)
    proxy = urllib.request.getproxies_environment().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass_environment(parts.hostname or ""):
        return urllib3.ProxyManager(proxy, **settings)
    return urllib3.PoolManager(**settings)


class GcsReader:
    """Reads gs:// objects whole and bounded, up to `connections` at once."""

    def __init__(self, connections: int):
        import urllib3
        from apache_beam.io.gcp.gcsio import create_storage_client
        from apache_beam.io.gcp.gcsio_retry import DEFAULT_RETRY_WITH_THROTTLING_COUNTER
        from apache_beam.options.pipeline_options import PipelineOptions
        from google.auth.transport.urllib3 import AuthorizedHttp

        client = create_storage_client(PipelineOptions())  # Beam's credentials and endpoint
        connection = client._connection
        self.endpoint = connection.API_BASE_URL
        self._headers = {
            **connection.extra_headers,
            "User-Agent": connection.user_agent,
            "Accept-Encoding": "gzip",  # the bytes as stored, which the checksums are of
        }
        pool = environment_pool(self.endpoint, connections + 4)
        self._http = AuthorizedHttp(client._credentials, http=pool)
        self._retry = DEFAULT_RETRY_WITH_THROTTLING_COUNTER
        self._timeout = urllib3.Timeout(connect=TIMEOUT_S, read=TIMEOUT_S)

    def read(self, uri: str, max_bytes: int, unknown_size: int, budget: ByteBudget) -> bytes:
        """The object's bytes; on return len(result) bytes are held in `budget`.

        One request: an object whose announced size is above max_bytes is refused from the
        headers, its body unread; one whose size is not announced holds `unknown_size` bytes
        until read. Transient faults are retried by Beam's policy; 404 raises NotFound and
        403 Forbidden (google.api_core.exceptions).
        """
        return self._retry(self._attempt)(uri, max_bytes, unknown_size, budget)

    def _attempt(self, uri: str, max_bytes: int, unknown_size: int, budget: ByteBudget):
        from google.api_core import exceptions

        response = self._http.request(
            "GET",
            media_url(self.endpoint, uri),
            headers=self._headers,
            preload_content=False,
            decode_content=False,
            retries=False,  # the retry policy above decides
            timeout=self._timeout,
        )
        whole = False
        try:
            if response.status != 200:
                detail = response.read(ERROR_BODY_BYTES).decode("utf-8", "replace").strip()
                raise exceptions.from_http_status(
                    response.status, f"GET {uri}: {response.status} {detail[:500]}"
                )
            announced = response.headers.get("Content-Length")
            expected = int(announced) if announced is not None else min(unknown_size, max_bytes)
            if announced is not None and expected > max_bytes:
                raise too_large(uri, expected, max_bytes)
            budget.acquire(expected)
            try:
                data = read_at_most(response.read, expected, max_bytes, uri)
                check_hash(response.headers.get("x-goog-hash"), data, uri)
            except BaseException:
                budget.release(expected)
                raise
            budget.resize(expected, len(data))
            whole = True
            return data
        finally:
            if not whole:
                response.close()  # an unread body: the connection is not reused
            response.release_conn()
