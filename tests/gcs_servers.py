"""Loopback stand-ins for Google's endpoints in tests: a GCE metadata server (so
google.auth.default() answers at once instead of stalling) and the gcp-storage-emulator
GCS server in a child process that stops when its parent goes away.

python -m tests.gcs_servers PORT DATA_DIR LOG runs the emulator until stdin closes, logging
each request to LOG. With faults on, the server itself behaves more like GCS: every download
takes at least 30 ms (so a run's reads spread over time, as against a real bucket), an object
whose name contains "flaky" answers its first download with 503, one containing "forbidden"
always answers 403, one containing "corrupt" comes with a wrong x-goog-hash. Always, it
serves gzip-encoded objects and pages listings as GCS does (_act_like_gcs). LatencyProxy
adds a fixed delay to every request (benchmarks: a real bucket's time to first byte), holds
the request a Gate names, and answers the downloads its Faults name with a fault instead.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

HOST = "127.0.0.1"
PROJECT = "test-project"
DOWNLOAD_LATENCY_S = 0.03


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class _MetadataHandler(http.server.BaseHTTPRequestHandler):
    """Answers the few metadata paths google-auth reads, like a VM with a service account."""

    def do_GET(self):
        path = self.path.split("?")[0]
        if path.endswith("/token"):
            body = json.dumps(
                {"access_token": "test-token", "expires_in": 3600, "token_type": "Bearer"}
            )
        elif "/service-accounts/" in path:
            body = json.dumps(
                {"email": "labeller@test.iam", "scopes": ["cloud-platform"], "aliases": []}
            )
        elif path.endswith("/project/project-id"):
            body = PROJECT
        elif path.endswith("/project/numeric-project-id"):
            body = "123"
        elif path in ("/", "/computeMetadata/v1/", "/computeMetadata/v1"):
            body = ""
        else:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", "application/json" if body[:1] == "{" else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # an OAuth token endpoint that refuses every grant
        data = json.dumps({"error": "invalid_grant", "error_description": "Token expired"})
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args):
        pass


class ChildServer:
    """A server run by a child process (python -m tests.gcs_servers ARGS) that exits when
    its stdin closes, so also when this process dies; start() waits until `url` answers."""

    what = "server"
    _proc: subprocess.Popen | None = None

    def _spawn(self, args: list[str], url: str, timeout: float) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.gcs_servers", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                return
            except OSError:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"the {self.what} exited at start") from None
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the {self.what} did not answer on {url}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self.running:
            self._proc.kill()
            self._proc.wait()


class MetadataServer(ChildServer):
    """GCE metadata on 127.0.0.1:port, in a child process: a thread of the test process would
    answer late whenever the test holds the GIL, and google-auth gives up after 3 s."""

    what = "metadata server"

    def __init__(self, port: int):
        self.port = port

    def start(self, timeout: float = 20) -> MetadataServer:
        self._spawn(["--metadata", str(self.port)], f"http://{HOST}:{self.port}/", timeout)
        return self


def _serve_metadata(port: int) -> None:
    """The child: serve until the parent closes our stdin (or dies)."""
    httpd = http.server.ThreadingHTTPServer((HOST, port), _MetadataHandler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    sys.stdin.read()
    httpd.shutdown()


def metadata_env(port: int) -> dict[str, str]:
    """Variables that point google-auth at a metadata server (read when google.auth imports)."""
    return {"GCE_METADATA_HOST": f"{HOST}:{port}", "GCE_METADATA_IP": f"{HOST}:{port}"}


class Emulator(ChildServer):
    """gcp-storage-emulator on a fixed loopback port, data on disk so it survives a restart."""

    what = "GCS emulator"

    def __init__(
        self,
        data_dir: str,
        port: int | None = None,
        faults: bool = False,
        threaded: bool = False,
        in_memory: bool = False,
    ):
        self.data_dir = data_dir
        # Objects in memory, gone at stop: thousands of uploads in seconds (on disk, each
        # rewrites the emulator's whole index, minutes for 2,500).
        self.in_memory = in_memory
        self.log = data_dir.rstrip("/") + "-requests.log"
        self.faults = faults
        self.threaded = threaded  # one thread per connection (the emulator serves one at a time)
        self.port = port or free_port()
        self.endpoint = f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 20) -> Emulator:
        args = [str(self.port), self.data_dir, self.log]
        args += (["--faults"] if self.faults else []) + (["--threaded"] if self.threaded else [])
        args += ["--in-memory"] if self.in_memory else []
        self._spawn(args, f"{self.endpoint}/storage/v1/b", timeout)
        return self

    def requests(self) -> list[str]:
        """Request lines served so far ('GET /download/storage/v1/b/... HTTP/1.1' ...)."""
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return f.read().splitlines()


class _BusyServer(http.server.ThreadingHTTPServer):
    """A thread per connection, and room for many connections waiting to be accepted (the
    default backlog of 5 drops the rest, and their clients retry only after a second)."""

    request_queue_size = 256
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client killed mid-request (the point of some tests) is not the proxy's error


class Gate:
    """Holds the n-th (1-based) download, upload or copy (a rename's first half: how a
    finished file is committed into its partition) of an object whose name contains `part`
    until released: a point in a run that a test chooses, and knows the run has reached
    (`holding` is set while the request waits)."""

    def __init__(self, n: int, part: str, upload: bool = False, copy: bool = False):
        self.n, self.part, self.upload, self.copy = n, part, upload, copy
        self.holding = threading.Event()
        self._released = threading.Event()
        self._seen = 0
        self._lock = threading.Lock()

    def pass_through(self, method: str, path: str, body: bytes) -> None:
        import urllib.parse

        if self.upload:  # the request that starts an upload names the object, in the query or body
            if method != "POST" or "uploadType=" not in path:
                return
            named = urllib.parse.unquote(path) + body[:4096].decode("latin-1")
        elif self.copy:  # alone or in a batch: ".../o/SOURCE/copyTo/b/BUCKET/o/DESTINATION"
            named = urllib.parse.unquote(path + body[:65536].decode("latin-1"))
            if method != "POST" or not ("copyTo/" in named or "rewriteTo/" in named):
                return
            named = named.split("copyTo/", 1)[-1].split("rewriteTo/", 1)[-1]
        elif "alt=media" in path:
            named = urllib.parse.unquote(path.split("?", 1)[0])
        else:
            return
        if self.part not in named:
            return
        with self._lock:
            self._seen += 1
            mine = self._seen == self.n
        if mine:
            self.holding.set()
            self._released.wait(300)

    def release(self) -> None:
        self._released.set()


def _media_name(path: str) -> str | None:
    """The object a media download's path names (None for any other request)."""
    import urllib.parse

    if "alt=media" not in path:
        return None
    return urllib.parse.unquote(path.split("?", 1)[0].rsplit("/o/", 1)[-1])


class Fault:
    """Answers the n-th (1-based; n=0: every) download of an object whose name contains
    `part` with a fault in place of the object: "short" (the whole Content-Length, half the
    body, then a clean close), "reset" (half the body, then a TCP reset), "flip" (the body
    with one byte changed, its stored checksum kept), or an HTTP status (404, 403, 503...);
    with hashless, the faulty reply has no x-goog-hash (nothing to check its bytes against).
    `answered` counts the faults given; `downloads` every download of the object."""

    def __init__(self, part: str, kind: str | int, n: int = 1, hashless: bool = False):
        self.part, self.kind, self.n, self.hashless = part, kind, n, hashless
        self.answered = self.downloads = 0
        self._lock = threading.Lock()

    def answer(self, handler: http.server.BaseHTTPRequestHandler, headers, data: bytes) -> bool:
        """Writes the fault to `handler` and says True when this request is one to fault."""
        name = _media_name(handler.path)
        if name is None or self.part not in name:
            return False
        with self._lock:
            self.downloads += 1
            if self.n and self.downloads != self.n:
                return False
            self.answered += 1
        if isinstance(self.kind, int):
            body = json.dumps({"error": {"code": self.kind, "message": "injected"}}).encode()
            handler.send_response_only(self.kind)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return True
        if self.kind == "flip":
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        handler.send_response_only(200)
        dropped = {"content-length", "connection", "transfer-encoding"}
        dropped |= {"x-goog-hash"} if self.hashless else set()
        for key, value in headers:
            if key.lower() not in dropped:
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if self.kind == "flip":
            handler.wfile.write(data)
            return True
        handler.wfile.write(data[: len(data) // 2])
        handler.close_connection = True  # "short": the server closes it (FIN) when we return
        if self.kind == "reset":
            linger = struct.pack("ii", 1, 0)  # close at once with a RST, not a FIN
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            handler.connection.close()
        return True


class _DelayingProxyHandler(http.server.BaseHTTPRequestHandler):
    """Forwards each request to the upstream server after `delay` seconds: a bucket's time
    to first byte, paid per request as on a real bucket."""

    protocol_version = "HTTP/1.1"  # keep-alive from the client, as to a real endpoint
    # Headers and body leave in two writes: with Nagle's algorithm on, the body would wait for
    # the client's delayed ACK of the headers (40 ms on Linux), nearly doubling the delay.
    disable_nagle_algorithm = True
    upstream: tuple[str, int] = (HOST, 0)
    delay = 0.05
    gate: Gate | None = None
    faults: tuple[Fault, ...] = ()

    def _forward(self):
        import http.client

        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.gate:
            self.gate.pass_through(self.command, self.path, body)
        time.sleep(self.delay)
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
        finally:
            conn.close()
        if reply.status == 200 and any(
            f.answer(self, reply.getheaders(), data) for f in self.faults
        ):
            return
        self.send_response_only(reply.status, reply.reason)
        for key, value in reply.getheaders():
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

    def log_message(self, *args):
        pass


class LatencyProxy:
    """127.0.0.1:port -> upstream, each request `delay` seconds late (and the one request
    `gate` names held, if given; the downloads `faults` name answered with their fault);
    served from daemon threads, so it stops with the process that started it."""

    def __init__(
        self,
        upstream_port: int,
        delay: float = 0.05,
        port: int | None = None,
        gate: Gate | None = None,
        faults: tuple[Fault, ...] = (),
    ):
        attributes = {
            "upstream": (HOST, upstream_port),
            "delay": delay,
            "gate": gate,
            "faults": tuple(faults),
        }
        handler = type("Handler", (_DelayingProxyHandler,), attributes)
        self.port = port or free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self._httpd = _BusyServer((HOST, self.port), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> LatencyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _inject_faults(handler_cls) -> None:
    import urllib.parse

    original = handler_cls.do_GET
    failed_once: set[str] = set()

    def do_get(self):
        if "alt=media" in self.path:
            time.sleep(DOWNLOAD_LATENCY_S)
            name = urllib.parse.unquote(self.path.split("?")[0].rsplit("/o/", 1)[-1])
            if "forbidden" in name:
                self.send_error(403, "injected permanent fault")
                return
            if "flaky" in name and name not in failed_once:
                failed_once.add(name)
                self.send_error(503, "injected transient fault")
                return
            if "corrupt" in name:  # the bytes as stored, announced with another checksum
                send_header = self.send_header

                def corrupted(key, value):
                    if key.lower() == "x-goog-hash":
                        value = "crc32c=AAAAAA==,md5=1B2M2Y8AsgTpgAmY7PhCfg=="
                    send_header(key, value)

                self.send_header = corrupted
        original(self)

    handler_cls.do_GET = do_get


def _act_like_gcs(emulator) -> None:
    """Two things GCS does that the emulator (2026.7.19) does not, and tests rely on. An
    object stored with Content-Encoding: gzip is served as stored with that header to a
    client that accepts gzip (x-goog-hash stays the stored bytes'; decompressive transcoding
    for other clients is not emulated). A listing with maxResults comes in pages of that
    many, in name order, with a nextPageToken (the emulator returns everything at once)."""
    from http import HTTPStatus

    from gcp_storage_emulator.handlers import objects

    def download(request, response, storage, *args, **kwargs):
        objects.download(request, response, storage, *args, **kwargs)
        accepted = request.get_header("Accept-Encoding") or ""
        if response.status != HTTPStatus.OK or "gzip" not in accepted:
            return
        params = request.params
        stored = storage.get_file_obj(params["bucket_name"], params["object_id"])
        if (stored.get("contentEncoding") or "").lower() == "gzip":
            response["Content-Encoding"] = "gzip"
            response["x-goog-stored-content-encoding"] = "gzip"

    def ls(request, response, storage, *args, **kwargs):
        objects.ls(request, response, storage, *args, **kwargs)
        size = request.query.get("maxResults")
        if response.status != HTTPStatus.OK or not size:
            return
        size, after = int(size[0]), (request.query.get("pageToken") or [""])[0]
        listing = json.loads(response._content)
        rest = sorted((i for i in listing["items"] if i["name"] > after), key=lambda i: i["name"])
        listing["items"] = rest[:size]
        if len(rest) > size:
            listing["nextPageToken"] = rest[size - 1]["name"]
        if after:  # prefixes (with a delimiter) all come on the first page
            listing["prefixes"] = []
        response.json(listing)

    for _, handlers in emulator.HANDLERS:
        for method, handler in handlers.items():
            if handler is objects.download:
                handlers[method] = download
            elif handler is objects.ls:
                handlers[method] = ls


def _enforce_generation_preconditions() -> None:
    """ifGenerationMatch on uploads and deletes, as GCS has it (the emulator ignores it): 412
    unless the object's generation is the one given (0: the object must not exist). Checked
    and applied under one lock, so two uploads with ifGenerationMatch=0 cannot both win."""
    from http import HTTPStatus

    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    lock = threading.Lock()

    def generation(storage, bucket: str, name: str) -> str:
        try:
            return str(storage.get_file_obj(bucket, name)["generation"])
        except NotFound:
            return "0"

    def guarded(handler, name_of):
        def call(request, response, storage, *args, **kwargs):
            wanted = request.query.get("ifGenerationMatch")
            if not wanted:
                return handler(request, response, storage, *args, **kwargs)
            with lock:
                bucket = request.params["bucket_name"]
                if generation(storage, bucket, name_of(request)) != wanted[0]:
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    response.json({"error": {"code": 412, "message": "Precondition Failed"}})
                    return None
                return handler(request, response, storage, *args, **kwargs)

        return call

    def upload_name(request) -> str:
        if "name" in request.query:
            return request.query["name"][0]
        return request.data["meta"].get("name")

    objects._multipart_upload = guarded(objects._multipart_upload, upload_name)
    objects._media_upload = guarded(objects._media_upload, upload_name)
    delete = guarded(objects.delete, lambda request: request.params["object_id"])
    from gcp_storage_emulator import server as emulator

    emulator.HANDLERS = tuple(
        (regex, {m: delete if h is objects.delete else h for m, h in handlers.items()})
        for regex, handlers in emulator.HANDLERS
    )


def _serve(
    port: int, data_dir: str, log: str, faults: bool, threaded: bool = False, in_memory=False
) -> None:
    """The child: serve until the parent closes our stdin (or dies)."""
    import logging

    from gcp_storage_emulator import server as emulator

    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("gcp_storage_emulator").addHandler(handler)
    logging.getLogger("gcp_storage_emulator").setLevel(logging.INFO)
    _act_like_gcs(emulator)
    _enforce_generation_preconditions()
    if faults:
        _inject_faults(emulator.RequestHandler)
    if threaded:
        emulator.server.HTTPServer = _BusyServer
    if in_memory:  # its index file is only read back at start, so not written at all
        from gcp_storage_emulator.storage import Storage

        Storage._write_config_to_file = lambda self: None
    server = emulator.create_server(HOST, port, in_memory=in_memory, data_dir=data_dir)
    server.start()
    sys.stdin.read()
    server.stop()


if __name__ == "__main__" and sys.argv[1] == "--metadata":
    _serve_metadata(int(sys.argv[2]))
elif __name__ == "__main__":
    _serve(
        int(sys.argv[1]),
        sys.argv[2],
        sys.argv[3],
        "--faults" in sys.argv[4:],
        "--threaded" in sys.argv[4:],
        "--in-memory" in sys.argv[4:],
    )
