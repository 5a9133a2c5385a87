"""gs:// in and out against a real GCS-protocol server on loopback (gcp-storage-emulator),
with the real google-cloud-storage client and Beam's GCS IO: globs, manifests, faults,
an outage mid-run, and bucket checks before any work."""

import json
import threading
import time

from google.cloud import storage

from tests.gcs_proxy import Fault
from tests.gcs_servers import HOST, free_port
from tests.runs import cli, config_for, counter_values, read_rows, run_graph, storage_through_gate
from transforms import metrics


def copy_object(bucket: str, source: str, name: str) -> str:
    """A copy of the JPEG gs://bucket/source at gs://bucket/name with a comment segment naming
    it, so that its content is its own (identical objects would be read once); the new URI."""
    b = storage.Client().bucket(bucket)
    data = b.blob(source.split(f"gs://{bucket}/", 1)[1]).download_as_bytes()
    comment = name.encode()
    marked = data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]
    b.blob(name).upload_from_string(marked)
    return f"gs://{bucket}/{name}"


def test_glob_in_parquet_out_with_transient_and_permanent_faults(
    gcs, bucket, gcs_images, probe_model
):
    first = gcs_images["good"][0]
    flaky = [copy_object(bucket, first, f"images/flaky_{i}.jpg") for i in range(3)]
    forbidden = copy_object(bucket, first, "images/forbidden.jpg")
    corrupt = copy_object(bucket, first, "images/corrupt.jpg")  # a wrong x-goog-hash
    out = f"gs://{bucket}/out"
    proc = cli(
        f"--input={gcs_images['root']}/**",
        f"--output={out}",
        f"--model={probe_model}",
        "--max_error_ratio=0.5",  # the test folders hold 5 bad files of 35
        "--image_size=64",
        "--batch_size=8",
        "--date=2025-02-03",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    predictions, errors = read_rows(out, "predictions"), read_rows(out, "errors")
    good = set(gcs_images["good"]) | set(gcs_images["patches"]) | set(flaky)
    bad = set(gcs_images["bad"]) | {forbidden, corrupt}
    assert sorted(r["uri"] for r in predictions) == sorted(good)  # each exactly once
    assert sorted(r["uri"] for r in errors) == sorted(bad)
    assert {r["date"] for r in predictions + errors} == {"2025-02-03"}
    by_uri = {r["uri"]: r for r in errors}
    assert by_uri[forbidden]["stage"] == "read" and "403" in by_uri[forbidden]["error"]
    assert (by_uri[corrupt]["stage"], by_uri[corrupt]["reason"]) == ("read", "read failed")
    assert "crc32c of the" in by_uri[corrupt]["error"], by_uri[corrupt]
    # The 503s really happened, and each flaky object was fetched again after its 503.
    downloads = [line for line in gcs.requests() if "alt=media" in line]
    for uri in flaky:
        name = uri.rsplit("/", 1)[1]
        served = [line for line in downloads if name in line]
        assert '" 503 ' in served[0]
        assert any('" 200 ' in line or '" 206 ' in line for line in served[1:]), served
    assert f"{out}/predictions/date=2025-02-03" in proc.stderr


def test_a_gzip_encoded_jpeg_is_labelled_as_its_plain_copy(bucket, probe_model, sample_jpeg):
    """Stored with Content-Encoding: gzip (as `gsutil cp -Z` stores it): read inflated, as the
    storage client gives it, so it is labelled, with the plain copy's labels."""
    import gzip

    target = storage.Client().bucket(bucket)
    target.blob("photos/plain.jpg").upload_from_string(sample_jpeg, content_type="image/jpeg")
    zipped = target.blob("photos/zipped.jpg")
    zipped.content_encoding = "gzip"
    zipped.upload_from_string(gzip.compress(sample_jpeg), content_type="image/jpeg")
    out = f"gs://{bucket}/out"
    proc = cli(
        f"--input=gs://{bucket}/photos/*.jpg",
        f"--output={out}",
        f"--model={probe_model}",
        "--image_size=64",
        "--job_name=gzip-check",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_rows(out, "errors") == []
    rows = {r["uri"].rsplit("/", 1)[1]: r for r in read_rows(out, "predictions")}
    assert sorted(rows) == ["plain.jpg", "zipped.jpg"]
    assert rows["zipped.jpg"]["labels"] == rows["plain.jpg"]["labels"]
    assert rows["zipped.jpg"]["scores"] == rows["plain.jpg"]["scores"]


def test_manifest_on_gcs_listing_a_missing_object(bucket, gcs_images, probe_model, tmp_path):
    listed = sorted(gcs_images["patches"])[:4]
    missing = f"gs://{bucket}/images/never-uploaded.jpg"
    manifest = storage.Client().bucket(bucket).blob("lists/today.txt")
    manifest.upload_from_string("\n".join([*listed, missing, listed[0]]) + "\n")
    config = config_for(
        f"--input_manifest=gs://{bucket}/lists/today.txt",
        f"--output={tmp_path / 'out'}",
        f"--model={probe_model}",
        "--max_error_ratio=0.5",  # the test folders hold 5 bad files of 35
        "--image_size=32",
    )
    result, predictions, errors = run_graph(config)
    assert sorted(r["uri"] for r in predictions) == listed
    assert [(r["uri"], r["stage"]) for r in errors] == [(missing, "read")]
    assert "NotFound" in errors[0]["error"]
    assert counter_values(result)[metrics.IMAGES_READ] == 5


def test_object_deleted_and_storage_outage_mid_run_lose_nothing(
    gcs, bucket, gcs_images, probe_model
):
    """After the first image download (the inputs are all listed by then): one image not yet
    read is deleted, then the server goes away and comes back 3 s later."""
    out = f"gs://{bucket}/out"
    seen_before = len(gcs.requests())
    outage = {}

    def interrupt():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            downloads = [line for line in gcs.requests()[seen_before:] if "alt=media" in line]
            if downloads:
                unread = [
                    u
                    for u in gcs_images["good"]
                    if not any(u.rsplit("/", 1)[1] in d for d in downloads)
                ]
                outage["deleted"] = unread[-1]
                storage.Client().bucket(bucket).blob(
                    unread[-1].split(f"gs://{bucket}/")[1]
                ).delete()
                gcs.stop()
                outage["requests"] = len(gcs.requests())
                time.sleep(3)
                gcs.start()
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=interrupt)
    watcher.start()
    try:
        proc = cli(
            f"--input={gcs_images['root']}/**",
            f"--output={out}",
            f"--model={probe_model}",
            "--max_error_ratio=0.5",  # the test folders hold 5 bad files of 35
            "--image_size=64",
            "--batch_size=4",
            # One request at a time, so an image the log does not show yet is not in flight.
            "--read_concurrency=1",
        )
    finally:
        watcher.join()
        if not gcs.running:
            gcs.start()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "requests" in outage, "the outage never happened"
    after = [line for line in gcs.requests()[outage["requests"] :] if "alt=media" in line]
    assert after, "no image was read after the restart"

    errors = read_rows(out, "errors")
    uris = [r["uri"] for r in read_rows(out, "predictions") + errors]
    everything = [*gcs_images["good"], *gcs_images["patches"], *gcs_images["bad"]]
    assert sorted(uris) == sorted(everything)  # each exactly once, retried or failed
    deleted = [r for r in errors if r["uri"] == outage["deleted"]]
    assert [(r["stage"], r["reason"]) for r in deleted] == [("read", "not found")]


def test_missing_bucket_fails_fast_naming_it(gcs, probe_model, tmp_path):
    start = time.monotonic()
    proc = cli(
        "--input=gs://no-such-bucket/**.jpg", f"--output={tmp_path}", f"--model={probe_model}"
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "python -m pipeline.run: error: bucket gs://no-such-bucket does not exist"
    )
    assert time.monotonic() - start < 60
    assert not list(tmp_path.iterdir())


def test_unreachable_storage_fails_fast_naming_the_bucket(metadata_server, probe_model, tmp_path):
    start = time.monotonic()
    proc = cli(
        "--input=gs://photos/**.jpg",
        f"--output={tmp_path}",
        f"--model={probe_model}",
        "--max_error_ratio=0.5",  # the test folders hold 5 bad files of 35
        env={"STORAGE_EMULATOR_HOST": f"http://{HOST}:{free_port()}"},
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m pipeline.run: error: cannot reach gs://photos ("), last
    assert time.monotonic() - start < 60


def test_bad_credentials_fail_fast_naming_the_bucket(
    metadata_server, bucket, probe_model, tmp_path
):
    """A service-account key the token endpoint (on loopback) refuses, as for a deleted key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    key = tmp_path / "key.json"
    key.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "test-project",
                "private_key_id": "1",
                "private_key": pem,
                "client_email": "deleted@test-project.iam.gserviceaccount.com",
                "token_uri": f"http://{HOST}:{metadata_server.port}/token",
            }
        )
    )
    proc = cli(
        f"--input=gs://{bucket}/**.jpg",
        f"--output={tmp_path / 'out'}",
        f"--model={probe_model}",
        "--max_error_ratio=0.5",  # the test folders hold 5 bad files of 35
        env={"GOOGLE_APPLICATION_CREDENTIALS": str(key)},
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"python -m pipeline.run: error: gs://{bucket}: the credentials"), last
    assert "invalid_grant" in last and "application-default login" in last


def test_each_uri_s_row_is_its_own_and_a_short_body_is_read_again(
    gcs, bucket, probe_model, sample_jpeg
):
    """Three objects of the same bytes (one work unit): the first in URI order answers 404
    at read time, so the second is read and serves the third. Another answers its first GET
    with its whole Content-Length, half its body and a clean close: read again, labelled as
    its plain copy."""
    target = storage.Client().bucket(bucket)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        target.blob(f"photos/{name}").upload_from_string(sample_jpeg)
    short = copy_object(bucket, f"gs://{bucket}/photos/a.jpg", "photos/short.jpg")
    gone, short_body = Fault("photos/a.jpg", 404, n=0), Fault("photos/short.jpg", "short")
    out = f"gs://{bucket}/out"
    with storage_through_gate(gcs.port, faults=[gone, short_body]) as env:
        proc = cli(
            f"--input=gs://{bucket}/photos/*.jpg",
            f"--output={out}",
            f"--model={probe_model}",
            "--image_size=64",
            "--max_error_ratio=0.5",
            env=env,
        )
        predictions, errors = read_rows(out, "predictions"), read_rows(out, "errors")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b, c = (f"gs://{bucket}/photos/{name}.jpg" for name in "abc")
    assert sorted(r["uri"] for r in predictions) == [b, c, short]  # each exactly once
    assert [(r["uri"], r["stage"], r["reason"]) for r in errors] == [(a, "read", "not found")]
    assert a in errors[0]["error"] and b not in errors[0]["error"]
    rows = {r["uri"]: r for r in predictions}
    assert rows[short]["labels"] == rows[b]["labels"] == rows[c]["labels"]
    assert rows[short]["scores"] == rows[b]["scores"]
    assert (gone.downloads, short_body.downloads, short_body.answered) == (1, 2, 1)
    summary = proc.stderr.strip().splitlines()[-1]
    assert "labelled 3 of 4 images, 1 failed (read: 1 not found)" in summary, summary
    assert ", 1 served by an identical image in " in summary, summary
