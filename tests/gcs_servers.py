"""Loopback stand-ins for Google's endpoints in tests: a GCE metadata server (so
google.auth.default() answers at once instead of stalling) and the gcp-storage-emulator
GCS server in a child process that stops when its parent goes away.

python -m tests.gcs_servers PORT DATA_DIR LOG runs the emulator until stdin closes, logging
each request to LOG. With faults on, the server itself behaves more like GCS: every download
takes at least 30 ms (so a run's reads spread over time, as against a real bucket), an object
whose name contains "flaky" answers its first download with 503, one containing "forbidden"
always answers 403, one containing "corrupt" comes with a wrong x-goog-hash. Always, it
serves gzip-encoded objects and pages listings as GCS does (_act_like_gcs). The proxy that
tests put in front of it is in tests/gcs_proxy.py.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
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


class BusyServer(http.server.ThreadingHTTPServer):
    """A thread per connection, and room for many connections waiting to be accepted (the
    default backlog of 5 drops the rest, and their clients retry only after a second)."""

    request_queue_size = 256
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client killed mid-request (the point of some tests) is not the proxy's error


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
        emulator.server.HTTPServer = BusyServer
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
