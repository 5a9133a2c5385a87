"""gs:// without Beam's pipeline: media URLs, stored-checksum checks against published test
vectors, proxy and CA settings from the environment as requests takes them, gzip-encoded
objects inflated within the limit, the job's credentials and headers (as Beam's own client
has them) on reads and the bucket check, and listings in pages."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import tracemalloc
import types
from collections.abc import Iterator

import pytest
import urllib3
from apache_beam.options.pipeline_options import PipelineOptions
from google.api_core import exceptions as api_exceptions

from tests.gcs_proxy import Fault, LatencyProxy
from tests.gcs_servers import Emulator, free_port
from transforms import rows
from transforms import vocabulary as v
from transforms.storage import curl_get, gcs, retries
from transforms.storage.bounded import MB, ByteBudget
from transforms.storage.listing import Listed

# crc32c("123456789") = 0xE3069283 (RFC 3720, B.4); md5("") = d41d8cd98f00b204e9800998ecf8427e.
CHECK_CRC32C = "4waSgw=="
EMPTY_MD5 = "1B2M2Y8AsgTpgAmY7PhCfg=="


def test_media_url_quotes_the_bucket_and_the_whole_object_name():
    url = gcs.media_url("https://storage.googleapis.com", "gs://b/a dir/x#1?%.jpg")
    assert url == (
        "https://storage.googleapis.com/download/storage/v1/b/b/o/a%20dir%2Fx%231%3F%25.jpg"
        "?alt=media"
    )


@pytest.mark.parametrize(
    "header, data",
    [
        (f"crc32c={CHECK_CRC32C},md5=wrong", b"123456789"),  # crc32c first when both
        (f"md5={EMPTY_MD5}", b""),
        (None, b"anything"),  # no stored checksum announced: nothing to check
        ("", b"anything"),
    ],
)
def test_matching_or_absent_checksums_pass(header, data):
    gcs.check_hash(header, data, "gs://b/o")


@pytest.mark.parametrize(
    "header, data",
    [
        (f"crc32c={CHECK_CRC32C}", b"123456780"),
        (f"md5={EMPTY_MD5}", b"x"),
        (f"md5={EMPTY_MD5}, crc32c={CHECK_CRC32C}", b""),  # crc32c decides
    ],
)
def test_mismatching_checksums_are_refused(header, data):
    with pytest.raises(gcs.ChecksumMismatch, match="gs://b/o"):
        gcs.check_hash(header, data, "gs://b/o")


def clear_proxy_env(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` answering on loopback, on threads of this process: yields its endpoint."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def no_one(options):
    """In place of Beam's get_service_credentials: no credentials found, reads go anonymously."""
    return None


def test_the_environment_s_proxy_and_ca_bundle_are_used(monkeypatch, tmp_path):
    clear_proxy_env(monkeypatch)
    bundle = tmp_path / "ca.pem"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    route = curl_get.environment_route("https://storage.googleapis.com")
    assert route == curl_get.Route("http://proxy.example:3128", str(bundle))


def test_no_proxy_bypasses_it_and_certifi_is_the_default_bundle(monkeypatch):
    import certifi

    clear_proxy_env(monkeypatch)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", ".googleapis.com")
    route = curl_get.environment_route("https://storage.googleapis.com")
    assert route == curl_get.Route("", certifi.where())
    # A plain-HTTP endpoint (an emulator) takes HTTP_PROXY, not HTTPS_PROXY.
    assert curl_get.environment_route("http://127.0.0.1:9").proxy == ""


def test_reads_go_through_the_environment_s_proxy(bucket, sample_jpeg, monkeypatch):
    """libcurl is told the route (its own reading of the environment is not used): an HTTP
    proxy named in HTTP_PROXY carries the read, and NO_PROXY takes it off again."""
    from google.cloud import storage

    storage.Client().bucket(bucket).blob("photo.jpg").upload_from_string(sample_jpeg)
    endpoint = os.environ["STORAGE_EMULATOR_HOST"]
    _Forwarder.seen = []
    clear_proxy_env(monkeypatch)
    with serving(_Forwarder) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        got = gcs.GcsReader({}).read(f"gs://{bucket}/photo.jpg", MB, MB, ByteBudget(MB))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        again = gcs.GcsReader({}).read(f"gs://{bucket}/photo.jpg", MB, MB, ByteBudget(MB))
    assert got == again == sample_jpeg
    reads = [url for url in _Forwarder.seen if "alt=media" in url]
    assert reads == [f"{endpoint}/download/storage/v1/b/{bucket}/o/photo.jpg?alt=media"]


def test_connection_faults_and_timeouts_are_transient_and_others_are_not():
    """What libcurl could not do, as the exception types retries.py tells apart."""
    import certifi

    getter = curl_get.Getter(curl_get.Route("", certifi.where()), timeout_s=1)
    take = lambda status, headers: MB  # noqa: E731
    silent = socket.create_server(("127.0.0.1", 0))  # accepts nothing, answers nothing
    closed = free_port()
    try:
        with pytest.raises(ConnectionError, match="GET gs://b/o: ") as refused:
            getter.get(f"http://127.0.0.1:{closed}/o", {}, take, "gs://b/o")
        with pytest.raises(TimeoutError, match="GET gs://b/o: ") as timed_out:
            getter.get(f"http://127.0.0.1:{silent.getsockname()[1]}/o", {}, take, "gs://b/o")
    finally:
        silent.close()
    with pytest.raises(curl_get.TransportError, match="libcurl error") as own:
        getter.get("nope://127.0.0.1/o", {}, take, "gs://b/o")
    kinds = [retries.fault_kind(e.value) for e in (refused, timed_out, own)]
    assert kinds == [retries.TRANSIENT, retries.TRANSIENT, retries.PERMANENT]


# A process that loaded TensorFlow first (its library exports a libcurl and an SSL library of
# its own, with RTLD_GLOBAL) reads over HTTPS on pycurl's libcurl and OpenSSL.
AFTER_TENSORFLOW = """
import datetime, http.server, json, shutil, ssl, sys, tempfile, threading
import tensorflow
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from transforms.storage import curl_get

key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
now = datetime.datetime.now(datetime.UTC)
ip = x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))
cert = (
    x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
    .not_valid_after(now + datetime.timedelta(hours=1))
    .add_extension(x509.SubjectAlternativeName([ip]), critical=False).sign(key, hashes.SHA256())
)
folder = tempfile.mkdtemp()
with open(f"{folder}/cert.pem", "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
with open(f"{folder}/key.pem", "wb") as f:
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))

class Photo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"image")

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Photo)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(f"{folder}/cert.pem", f"{folder}/key.pem")
server.socket = context.wrap_socket(server.socket, server_side=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"https://127.0.0.1:{server.server_port}/o"
trusting = curl_get.Getter(curl_get.Route("", f"{folder}/cert.pem"), timeout_s=5)
body = trusting.get(url, {}, lambda status, headers: 100, "gs://b/o").body
untrusting = curl_get.Getter(curl_get.Route("", sys.argv[1]), timeout_s=5)
try:
    untrusting.get(url, {}, lambda status, headers: 100, "gs://b/o")
    refused = ""
except curl_get.TransportError as e:
    refused = str(e)
server.shutdown()
shutil.rmtree(folder)
print(json.dumps([curl_get.pycurl.version, body.decode(), refused]))
"""


def test_reads_over_https_on_pycurl_s_own_libraries_after_tensorflow():
    """TensorFlow imported first, as a worker that loaded its model before its first read
    would have: the libcurl and OpenSSL of pycurl's wheel serve the read, a certificate the
    CA bundle does not vouch for is refused."""
    import certifi

    child = subprocess.run(
        [sys.executable, "-c", AFTER_TENSORFLOW, certifi.where()],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert child.returncode == 0, child.stderr[-2000:]
    version, body, refused = json.loads(child.stdout.strip().splitlines()[-1])
    assert version == curl_get.pycurl.version  # the same libcurl and OpenSSL as without TensorFlow
    assert "OpenSSL/" in version and body == "image"
    assert "libcurl error 60" in refused  # the peer's certificate not verified


class _Forwarder(http.server.BaseHTTPRequestHandler):
    """An HTTP proxy for GETs (the request line holds the whole URL): notes it, forwards it."""

    seen: list[str] = []

    def do_GET(self):
        import urllib.error
        import urllib.request

        type(self).seen.append(self.path)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            reply = opener.open(urllib.request.Request(self.path, headers=headers))
        except urllib.error.HTTPError as e:  # relayed as it is
            reply = e
        with reply:
            body = reply.read()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


# --- gzip-encoded objects: inflated as the storage client does, never past the limit --------


def test_gzip_members_are_all_inflated_and_trailing_bytes_ignored():
    data = gzip.compress(b"one ") + gzip.compress(b"two") + b"\0\0 not gzip"
    assert gcs.gunzip_at_most(data, 100, "gs://b/o") == b"one two"


@pytest.mark.parametrize("data", [b"not gzip at all", gzip.compress(b"x" * 1000, mtime=0)[:-12]])
def test_bytes_that_are_not_whole_gzip_are_refused(data):
    with pytest.raises(gcs.BadGzip, match="gs://b/o"):
        gcs.gunzip_at_most(data, 10 * MB, "gs://b/o")


def test_a_gzip_bomb_is_too_large_without_inflating_it():
    bomb = gzip.compress(bytes(200 * MB), compresslevel=1)
    assert gcs.gunzip_at_most(gzip.compress(bytes(MB)), MB, "gs://b/o") == bytes(MB)
    tracemalloc.start()
    try:
        with pytest.raises(v.ImageError) as raised:
            gcs.gunzip_at_most(bomb, MB, "gs://b/o")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert raised.value.reason == v.TOO_LARGE and "--max_object_mb" in str(raised.value)
    assert peak < 4 * MB, f"{peak:,} bytes held to refuse it"


def test_a_gzip_bomb_in_a_bucket_is_too_large_and_holds_nothing(bucket):
    from google.cloud import storage

    blob = storage.Client().bucket(bucket).blob("bomb.jpg")
    blob.content_encoding = "gzip"
    blob.upload_from_string(gzip.compress(bytes(20 * MB), compresslevel=1))
    budget = ByteBudget(8 * MB)
    with pytest.raises(v.ImageError) as raised:
        gcs.GcsReader({}).read(f"gs://{bucket}/bomb.jpg", 4 * MB, MB, budget)
    assert raised.value.reason == v.TOO_LARGE
    assert budget.used == 0


class _Endless(http.server.BaseHTTPRequestHandler):
    """A media download whose size is not announced and whose body never ends (chunked)."""

    protocol_version = "HTTP/1.1"
    sent = 0

    def do_GET(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"%x\r\n%s\r\n" % (64 << 10, bytes(64 << 10))
        try:
            while True:
                self.wfile.write(chunk)
                type(self).sent += 64 << 10
        except OSError:  # the reader hung up
            pass

    def log_message(self, *args):
        pass


def test_an_endless_body_of_no_announced_size_is_too_large_and_holds_nothing(monkeypatch):
    monkeypatch.setattr("apache_beam.internal.gcp.auth.get_service_credentials", no_one)
    budget = ByteBudget(8 * MB)
    with serving(_Endless) as endpoint:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        with pytest.raises(v.ImageError) as raised:
            gcs.GcsReader({}).read("gs://photos/endless.jpg", 2 * MB, MB, budget)
    assert raised.value.reason == v.TOO_LARGE and "--max_object_mb" in str(raised.value)
    assert budget.used == 0
    assert _Endless.sent < 16 * MB  # the reader stopped taking it past the limit


# --- one credentials path: the job's options, as Beam's own storage client reads them ------

JOB = [
    "--job_name=nightly-labels",
    "--project=labels-project",
    '--gcs_custom_audit_entries={"team": "vision"}',
]


@pytest.fixture
def fresh_beam_credentials(metadata_server, monkeypatch):
    """Beam keeps the first credentials it makes for the whole process: let this test's
    options make them (from the loopback metadata server)."""
    from apache_beam.internal.gcp import auth

    monkeypatch.setattr(auth._Credentials, "_credentials_init", False)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)


def test_the_job_s_client_is_set_up_as_beam_s_own(fresh_beam_credentials):
    from apache_beam.io.gcp.gcsio import create_storage_client

    options = PipelineOptions(JOB)
    ours = gcs.access(gcs.job_options(options)).client
    beams = create_storage_client(options)
    assert ours.api_endpoint == beams.api_endpoint
    assert ours.project == beams.project == "labels-project"
    assert ours._credentials is beams._credentials  # Beam's, not google.auth.default()'s
    assert ours._connection.user_agent == beams._connection.user_agent
    assert ours._connection.extra_headers == beams._connection.extra_headers
    assert beams._connection.extra_headers["x-goog-custom-audit-job"] == "nightly-labels"


def test_impersonation_reaches_the_reader(fresh_beam_credentials):
    from google.auth import impersonated_credentials

    options = {"impersonate_service_account": "reader@labels-project.iam.gserviceaccount.com"}
    credentials = gcs.GcsReader(options).credentials
    assert isinstance(credentials, impersonated_credentials.Credentials)
    assert credentials.service_account_email == options["impersonate_service_account"]


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Storage on loopback that records each request's headers: media downloads answer
    b"image", listings an empty page."""

    seen: list = []

    def do_GET(self):
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        media = "alt=media" in self.path
        body = b"image" if media else b'{"kind": "storage#objects", "items": []}'
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg" if media else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # an upload (the lease): created, generation 1
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"kind": "storage#object", "generation": "1"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_DELETE(self):  # the lease released
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder(monkeypatch) -> type[_Recorder]:
    """_Recorder serving on loopback as the storage endpoint; its `seen` starts empty."""
    with serving(_Recorder) as endpoint:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        _Recorder.seen = []
        yield _Recorder


def test_the_lease_is_written_as_the_job(fresh_beam_credentials, recorder):
    """The output's lease (storage/lease.py) goes with the job's token and headers, as the
    reads do: created and deleted through gcs.access, not a default client."""
    from transforms.storage.lease import Lease

    options = gcs.job_options(PipelineOptions(JOB))
    Lease("gs://photos/out", "2025-01-02", "r1", options).acquire().release()
    [create] = [h for path, h in recorder.seen if path.startswith("/upload/")]
    [delete] = [h for path, h in recorder.seen if path.startswith("/storage/v1/b/photos/o/out")]
    for headers in (create, delete):
        assert headers["authorization"] == "Bearer test-token"
        assert headers["x-goog-custom-audit-job"] == "nightly-labels"
        assert headers["x-goog-custom-audit-team"] == "vision"
        assert headers["user-agent"].startswith("apache-beam/")


def test_reads_and_the_bucket_check_go_as_the_job(fresh_beam_credentials, recorder):
    """The same token and the job's headers on the start-up check and on a read, as on the
    storage client's own download."""
    from google.cloud import storage

    options = gcs.job_options(PipelineOptions(JOB))
    gcs.check_buckets(["gs://photos/a.jpg"], options)
    got = gcs.GcsReader(options).read("gs://photos/a.jpg", MB, MB, ByteBudget(MB))
    job = gcs.access(options).client
    assert storage.Blob("a.jpg", job.bucket("photos")).download_as_bytes() == got
    # (The client also fetches the bucket's metadata on the way.)
    [check] = [h for path, h in recorder.seen if path.startswith("/storage/v1/b/photos/o?")]
    read, client = [h for path, h in recorder.seen if "alt=media" in path]
    for headers in (check, read):
        assert headers["authorization"] == client["authorization"] == "Bearer test-token"
        assert headers["x-goog-custom-audit-job"] == "nightly-labels"
        assert headers["x-goog-custom-audit-team"] == "vision"
        assert headers["user-agent"] == client["user-agent"]
    assert read["user-agent"].startswith("apache-beam/")


class _RefusesFirst(_Recorder):
    """_Recorder, but the first media download is refused with 401 (an expired token)."""

    def do_GET(self):
        if "alt=media" in self.path and not any("alt=media" in p for p, _ in self.seen):
            self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


@pytest.mark.parametrize("signed_in", [True, False])
def test_a_401_refreshes_the_token_and_asks_once_more(
    signed_in, fresh_beam_credentials, monkeypatch
):
    """As google-auth's own transports do; without credentials there is nothing to refresh:
    the 401 is the read's error (no access)."""
    if not signed_in:  # Beam finds no credentials: the reads go anonymously
        monkeypatch.setattr("apache_beam.internal.gcp.auth.get_service_credentials", no_one)
    _Recorder.seen = []
    with serving(_RefusesFirst) as endpoint:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        reader = gcs.GcsReader(gcs.job_options(PipelineOptions(JOB)))
        refreshes = []
        refresh = reader.credentials.refresh
        reader.credentials.refresh = lambda request: (refreshes.append(1), refresh(request))
        if signed_in:
            assert reader.read("gs://photos/a.jpg", MB, MB, ByteBudget(MB)) == b"image"
        else:
            with pytest.raises(api_exceptions.Unauthorized) as raised:
                reader.read("gs://photos/a.jpg", MB, MB, ByteBudget(MB))
            assert v.reason_for(v.READ, raised.value) == v.NO_ACCESS
    downloads = [h for path, h in _Recorder.seen if "alt=media" in path]
    # Signed in: the first token, then a fresh one after the 401.
    assert (len(downloads), len(refreshes)) == ((2, 2) if signed_in else (1, 0))
    if signed_in:
        assert downloads[1]["authorization"] == "Bearer test-token"


# --- listings ---------------------------------------------------------------------------


@pytest.fixture
def memory_emulator(metadata_server, tmp_path, monkeypatch) -> Emulator:
    """An emulator of its own that keeps objects in memory (fast uploads), with a bucket
    "listed"."""
    from google.cloud import storage

    emulator = Emulator(str(tmp_path / "gcs"), in_memory=True).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.endpoint)
    storage.Client().create_bucket("listed")
    yield emulator
    emulator.stop()


def listing_requests(emulator: Emulator, bucket: str) -> list[dict[str, list[str]]]:
    """The query of each object listing the emulator served for `bucket`, from its log."""
    import urllib.parse

    lines = [line for line in emulator.requests() if f"GET /storage/v1/b/{bucket}/o?" in line]
    return [urllib.parse.parse_qs(line.split("?", 1)[1].split(" ", 1)[0]) for line in lines]


def test_listing_comes_in_pages_of_1000_with_versions_and_checksums(memory_emulator):
    from google.cloud import storage

    bucket = "listed"
    target = storage.Client().bucket(bucket)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: target.blob(f"many/{i:04}.jpg").upload_from_string(f"{i}" * (i % 7)),
                range(2500),
            )
        )
    target.blob("other/0.jpg").upload_from_string(b"outside the prefix")
    before = len(listing_requests(memory_emulator, bucket))
    listed = list(gcs.list_objects(f"gs://{bucket}/many/", {}))
    pages = listing_requests(memory_emulator, bucket)[before:]
    # Three requests of 1,000, each page after the first from the last name of the one before.
    assert [page["maxResults"] for page in pages] == [["1000"]] * 3
    assert [page.get("pageToken") for page in pages] == [None, ["many/0999.jpg"], ["many/1999.jpg"]]
    blobs = {b.name: b for b in target.list_blobs(prefix="many/")}
    assert [item.uri for item in listed] == [f"gs://{bucket}/{name}" for name in sorted(blobs)]
    for item in listed:
        blob = blobs[item.uri.split("/", 3)[3]]
        assert item.version == str(blob.generation)
        assert item.checksum == f"crc32c:{blob.crc32c}"
        assert item.size == blob.size
    assert listed[0].size == 0 and listed[1].size == 1


def test_a_listed_checksum_is_crc32c_else_md5_else_none():
    blob = types.SimpleNamespace(name="a b", size="3", generation=17, crc32c=None, md5_hash="m")
    assert gcs.listed_blob("b", blob) == Listed("gs://b/a b", 3, "17", "md5:m")
    blob.md5_hash = None
    assert gcs.listed_blob("b", blob).checksum == ""
    blob.crc32c = "c"
    assert gcs.listed_blob("b", blob).checksum == "crc32c:c"


def test_folder_placeholders_are_not_listed_as_inputs(memory_emulator):
    """The zero-byte 'name/' objects the Cloud Console's "Create folder" makes are left out,
    as local folders are; an empty file and a non-empty object named with '/' stay."""
    from google.cloud import storage

    target = storage.Client().bucket("listed")
    for name, data in [
        ("photos/", b""),
        ("photos/2026/", b""),
        ("photos/2026/a.jpg", b"jpeg"),
        ("photos/empty.jpg", b""),
        ("photos/odd/", b"bytes"),
    ]:
        target.blob(name).upload_from_string(data)
    listed = [item.uri for item in gcs.list_objects("gs://listed/photos/", {})]
    assert listed == [
        "gs://listed/photos/2026/a.jpg",
        "gs://listed/photos/empty.jpg",
        "gs://listed/photos/odd/",
    ]


# --- faults that look like data: tried again, by type, within one budget --------------------


class FakeTime:
    """A clock that moves only when slept on."""

    def __init__(self):
        self.now, self.slept = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def failing(*faults: BaseException):
    """An attempt that raises `faults` in turn, then returns b"bytes"; `calls` counts it."""
    queue = list(faults)

    def attempt():
        attempt.calls += 1
        if queue:
            raise queue.pop(0)
        return b"bytes"

    attempt.calls = 0
    return attempt


def retried(attempt, delays=None, seconds: float = retries.RETRY_SECONDS):
    time_ = FakeTime()
    delays = iter(delays or [1.0] * 100)
    result = retries.with_retries(attempt, delays, lambda: time_.now, time_.sleep, seconds)
    return result, time_


@pytest.mark.parametrize(
    "fault",
    [
        retries.ShortBody("gs://b/o: 10 of the 20 bytes announced"),
        retries.ChecksumMismatch("gs://b/o: crc32c does not match"),
        ConnectionResetError(104, "Connection reset by peer"),
        urllib3.exceptions.ProtocolError("Connection broken"),
        api_exceptions.ServiceUnavailable("503"),
        api_exceptions.TooManyRequests("429"),
    ],
    ids=type,
)
def test_transient_and_data_faults_are_read_again(fault):
    attempt = failing(fault, fault)
    result, time_ = retried(attempt)
    assert (result, attempt.calls, time_.slept) == (b"bytes", 3, [1.0, 1.0])


@pytest.mark.parametrize(
    "fault",
    [
        api_exceptions.NotFound("404"),
        api_exceptions.Forbidden("403"),
        v.ImageError(v.TOO_LARGE, "too large"),
        gcs.BadGzip("gs://b/o: not gzip"),
        ValueError("a bug"),
    ],
    ids=type,
)
def test_permanent_faults_are_not_read_again(fault):
    attempt = failing(fault)
    with pytest.raises(type(fault)) as raised:
        retried(attempt)
    assert attempt.calls == 1
    assert rows.describe(raised.value) == f"{type(fault).__name__}: {fault}"  # no count


def test_a_fault_that_stays_ends_at_the_deadline_with_its_attempt_count():
    fault = api_exceptions.ServiceUnavailable("GET gs://b/o: 503")
    attempt = failing(*[fault] * 100)
    with pytest.raises(api_exceptions.ServiceUnavailable) as raised:
        retried(attempt, delays=[1, 2, 4, 8, 16, 32, 60, 60], seconds=120)
    assert attempt.calls == 7  # 1+2+4+8+16+32 = 63 s slept; a 7th sleep of 60 s passes 120
    assert rows.describe(raised.value) == "ServiceUnavailable: 503 GET gs://b/o: 503 (7 attempts)"


def test_a_checksum_that_never_matches_is_read_three_times_then_an_error():
    fault = retries.ChecksumMismatch("gs://b/o: crc32c of the 9 bytes read does not match")
    attempt = failing(*[fault] * 10)
    with pytest.raises(retries.ChecksumMismatch) as raised:
        retried(attempt)
    assert attempt.calls == retries.MAX_DATA_ATTEMPTS == 3
    row = rows.failure_row("gs://b/o", v.READ, raised.value)
    assert row["reason"] == v.READ_FAILED
    assert row["error"].endswith("does not match (3 attempts)")


@pytest.fixture
def faulty(request, bucket, sample_jpeg, monkeypatch):
    """through(*faults) -> a GcsReader whose endpoint is a proxy to the emulator answering
    with those faults; and the URI of the sample JPEG in the bucket."""
    from google.cloud import storage

    storage.Client().bucket(bucket).blob("photo.jpg").upload_from_string(sample_jpeg)
    port = request.getfixturevalue("gcs").port
    proxies: list[LatencyProxy] = []

    def through(*faults: Fault) -> gcs.GcsReader:
        proxies.append(LatencyProxy(port, delay=0, faults=faults).start())
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxies[-1].endpoint)
        return gcs.GcsReader({})

    yield through, f"gs://{bucket}/photo.jpg"
    for proxy in proxies:
        proxy.stop()


@pytest.mark.parametrize(
    "kind,hashless",
    [("short", False), ("short", True), ("reset", False), ("flip", False), (503, False)],
)
def test_a_fault_on_the_first_download_is_read_again(kind, hashless, faulty, sample_jpeg):
    """A short body (full Content-Length, half the body, a clean close; with or without a
    checksum to find it by), a reset mid-body, a flipped byte (the stored crc32c not
    matched), a 503: the bytes as stored, from the second GET."""
    reader, uri = faulty
    fault = Fault("photo.jpg", kind, hashless=hashless)
    budget = ByteBudget(8 * MB)
    assert reader(fault).read(uri, 8 * MB, MB, budget) == sample_jpeg
    assert (fault.answered, fault.downloads) == (1, 2)
    assert budget.used == len(sample_jpeg)


@pytest.mark.parametrize("kind,reason", [(404, v.NOT_FOUND), (403, v.NO_ACCESS)])
def test_a_permanent_fault_is_one_download(kind, reason, faulty):
    reader, uri = faulty
    fault = Fault("photo.jpg", kind, n=0)
    budget = ByteBudget(8 * MB)
    with pytest.raises(api_exceptions.GoogleAPICallError) as raised:
        reader(fault).read(uri, 8 * MB, MB, budget)
    assert v.reason_for(v.READ, raised.value) == reason
    assert fault.downloads == 1 and budget.used == 0


def test_bytes_that_never_match_their_checksum_are_read_three_times(faulty):
    reader, uri = faulty
    fault = Fault("photo.jpg", "flip", n=0)
    budget = ByteBudget(8 * MB)
    with pytest.raises(retries.ChecksumMismatch) as raised:
        reader(fault).read(uri, 8 * MB, MB, budget)
    assert fault.downloads == 3 and budget.used == 0
    row = rows.failure_row(uri, v.READ, raised.value)
    assert (row["reason"], row["error"][-12:]) == (v.READ_FAILED, "(3 attempts)")
