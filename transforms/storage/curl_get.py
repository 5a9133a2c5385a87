"""One HTTP GET on libcurl (pycurl), the transport of gcs.py's reads: a handle per read
thread, kept with its connection; the reply's status, headers and body, the body bounded
as it arrives; transport faults as the exception types retries.py tells apart.

libcurl rather than urllib3 + http.client: a photo-sized object's read takes a third to a
half less CPU in the pipeline (docs/performance.md), and CPU per object is what bounds a
worker reading from gs://.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping

from transforms.storage.retries import ShortBody


def _load_pycurl():
    """pycurl, bound to the libcurl (and OpenSSL) its wheel brings. TensorFlow loads its
    framework library with RTLD_GLOBAL, and that library exports a libcurl and an SSL library
    of its own: imported after TensorFlow, pycurl would bind to those (it then refuses to load,
    "libcurl link-time version (8.11.0) is older than compile-time version"). RTLD_DEEPBIND
    puts pycurl's own libraries first, whichever came first (glibc's; other systems keep each
    library's symbols apart anyway)."""
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | getattr(os, "RTLD_DEEPBIND", 0))
    try:
        import pycurl
    finally:
        sys.setdlopenflags(flags)
    return pycurl


pycurl = _load_pycurl()


# libcurl's error codes (curl/curl.h) for faults of the connection, tried again; any other is
# this request's own (a bad certificate, a malformed URL) and is not.
_TIMED_OUT = {pycurl.E_OPERATION_TIMEDOUT}
_CONNECTION = {
    pycurl.E_COULDNT_RESOLVE_PROXY,
    pycurl.E_COULDNT_RESOLVE_HOST,
    pycurl.E_COULDNT_CONNECT,
    pycurl.E_GOT_NOTHING,
    pycurl.E_SEND_ERROR,
    pycurl.E_RECV_ERROR,
    pycurl.E_SSL_CONNECT_ERROR,
    pycurl.E_PARTIAL_FILE,  # a body that ended before its Content-Length (ShortBody)
    pycurl.E_FTP_WEIRD_SERVER_REPLY,  # 8, CURLE_WEIRD_SERVER_REPLY: a garbled HTTP reply
}


class TransportError(Exception):
    """A request libcurl could not make, for a reason of its own (not the connection's)."""


@dataclasses.dataclass(frozen=True)
class Route:
    """How requests reach an endpoint: through `proxy` ("" for none), trusting `ca_bundle`."""

    proxy: str
    ca_bundle: str


def environment_route(endpoint: str) -> Route:
    """The route requests would take from the environment to this endpoint: its scheme's
    proxy unless NO_PROXY bypasses the host, and the CA bundle of REQUESTS_CA_BUNDLE,
    CURL_CA_BUNDLE or certifi's."""
    import certifi

    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    parts = urllib.parse.urlsplit(endpoint)
    proxy = urllib.request.getproxies_environment().get(parts.scheme, "")
    if proxy and urllib.request.proxy_bypass_environment(parts.hostname or ""):
        proxy = ""
    return Route(proxy, bundle or certifi.where())


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class Getter:
    """GETs on `route`, each on the calling thread's own handle (its connection kept for the
    thread's next GET). timeout_s bounds connecting, and any stretch without a byte."""

    def __init__(self, route: Route, timeout_s: float):
        self.route = route
        self.timeout_s = timeout_s
        self._handles = threading.local()

    def _handle(self) -> pycurl.Curl:
        curl = getattr(self._handles, "curl", None)
        if curl is None:
            curl = self._handles.curl = pycurl.Curl()
            curl.setopt(pycurl.NOSIGNAL, 1)  # no SIGALRM for timeouts: this is a thread
            curl.setopt(pycurl.PROXY, self.route.proxy)  # "": none, whatever the environment
            curl.setopt(pycurl.CAINFO, self.route.ca_bundle)
            curl.setopt(pycurl.CONNECTTIMEOUT, int(self.timeout_s))
            curl.setopt(pycurl.LOW_SPEED_LIMIT, 1)  # under 1 byte/s for timeout_s: timed out
            curl.setopt(pycurl.LOW_SPEED_TIME, int(self.timeout_s))
            curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        return curl

    def get(
        self,
        url: str,
        headers: Mapping[str, str],
        body_limit: Callable[[int, dict[str, str]], int],
        what: str,
    ) -> Reply:
        """The reply to GET url (`what` names it in errors: the URI the user gave). Once its
        headers are in, body_limit(status, headers) says how many body bytes to take at most:
        the body is cut there (the Reply holds what came, the chunk that passed the limit
        included). An exception raised by body_limit is raised here; a body that ends before
        its Content-Length is ShortBody; connection faults ConnectionError, timeouts
        TimeoutError, others TransportError."""
        reply = _Receiving(body_limit)
        curl = self._handle()
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.HTTPHEADER, [f"{name}: {value}" for name, value in headers.items()])
        curl.setopt(pycurl.HEADERFUNCTION, reply.lines.append)
        curl.setopt(pycurl.WRITEFUNCTION, reply.write)
        try:
            curl.perform()
        except pycurl.error as e:
            if reply.raised is not None:
                raise reply.raised from None
            if not reply.cut:
                reply.parse()
                raise transport_fault(what, e, reply) from None
        if reply.limit < 0:  # no body: its limit was not asked for yet
            reply.headers_in()
        return Reply(reply.status, reply.headers, b"".join(reply.parts))


class _Receiving:
    """One reply as libcurl hands it over: its header lines (kept as they come), then its
    body's chunks; the headers are read when the first chunk comes. The callback never raises
    (pycurl would print the exception): it keeps it and stops the transfer."""

    def __init__(self, body_limit: Callable[[int, dict[str, str]], int]):
        self.body_limit = body_limit
        self.lines: list[bytes] = []
        self.status = 0
        self.headers: dict[str, str] = {}
        self.parts: list[bytes] = []
        self.received = 0
        self.limit = -1  # not yet known: the headers are not read
        self.cut = False
        self.raised: BaseException | None = None

    def parse(self) -> None:
        """The status and headers of the last reply among the lines (a 1xx comes first)."""
        starts = [i for i, line in enumerate(self.lines) if line.startswith(b"HTTP/")]
        if not starts:
            return
        self.status, self.headers = int(self.lines[starts[-1]].split(None, 2)[1]), {}
        for line in self.lines[starts[-1] + 1 :]:
            name, colon, value = line.decode("latin-1").partition(":")
            if colon:
                self.headers[name.strip().lower()] = value.strip()

    def headers_in(self) -> None:
        self.parse()
        self.limit = self.body_limit(self.status, self.headers)

    def write(self, chunk: bytes) -> int | None:
        if self.limit < 0:
            try:
                self.headers_in()
            except BaseException as e:  # body_limit's refusal, or a malformed status line
                self.raised = e
                return -1
        self.parts.append(chunk)
        self.received += len(chunk)
        if self.received > self.limit:
            self.cut = True
            return -1
        return None


def transport_fault(what: str, error: pycurl.error, reply: _Receiving) -> Exception:
    code, message = error.args
    announced = reply.headers.get("content-length", "")
    if code == pycurl.E_PARTIAL_FILE and reply.status == 200 and announced.isdigit():
        return ShortBody(f"{what}: {reply.received:,} of the {int(announced):,} bytes announced")
    if code in _TIMED_OUT:
        return TimeoutError(f"GET {what}: {message}")
    if code in _CONNECTION:
        return ConnectionError(f"GET {what}: {message}")
    return TransportError(f"GET {what}: libcurl error {code}: {message}")
