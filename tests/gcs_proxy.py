"""The loopback proxy tests put in front of the storage emulator (tests/gcs_servers.py):
LatencyProxy adds a fixed delay to every request (benchmarks: a real bucket's time to first
byte), holds the request a Gate names, and answers the downloads its Faults name with a fault
instead (a short body, a reset, a flipped byte, an HTTP status)."""

from __future__ import annotations

import http.server
import json
import socket
import struct
import threading
import time
import urllib.parse

from tests.gcs_servers import HOST, BusyServer, free_port


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
        self._httpd = BusyServer((HOST, self.port), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> LatencyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
