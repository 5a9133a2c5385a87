"""The gs:// reader (transforms/storage/gcs.py) held to google-cloud-storage's own download:
on the same objects in the emulator, GcsReader.read gives the bytes and errors that
blob.download_as_bytes(checksum="crc32c") gives (the same class, or the same error reason)."""

from __future__ import annotations

import gzip

import pytest
from google.cloud import storage

from transforms import vocabulary as v
from transforms.storage import gcs
from transforms.storage.bounded import MB, ByteBudget

# name -> (stored bytes, Content-Encoding); "missing" is never uploaded. The emulator's
# faults: a name with "forbidden" answers 403, one with "corrupt" a wrong x-goog-hash.
PLAIN, GZIPPED, EMPTY = "plain.jpg", "gzipped.jpg", "empty.jpg"
MISSING, FORBIDDEN = "missing.jpg", "forbidden.jpg"
CORRUPT, CORRUPT_GZIPPED = "corrupt.jpg", "corrupt-gzipped.jpg"
CASES = [PLAIN, GZIPPED, EMPTY, MISSING, FORBIDDEN, CORRUPT, CORRUPT_GZIPPED]


@pytest.fixture
def objects(bucket, sample_jpeg) -> dict[str, str]:
    """Each case's gs:// URI, uploaded with the real client."""
    stored = {
        PLAIN: (sample_jpeg, None),
        GZIPPED: (gzip.compress(sample_jpeg), "gzip"),
        EMPTY: (b"", None),
        FORBIDDEN: (sample_jpeg, None),
        CORRUPT: (sample_jpeg, None),
        CORRUPT_GZIPPED: (gzip.compress(sample_jpeg), "gzip"),
    }
    target = storage.Client().bucket(bucket)
    for name, (data, encoding) in stored.items():
        blob = target.blob(name)
        blob.content_encoding = encoding
        blob.upload_from_string(data, content_type="image/jpeg")
    return {name: f"gs://{bucket}/{name}" for name in CASES}


def outcome(call):
    try:
        return call(), None
    except Exception as e:
        return None, e


def client_download(uri: str):
    bucket, name = uri.removeprefix("gs://").split("/", 1)
    blob = storage.Client().bucket(bucket).blob(name)
    return outcome(lambda: blob.download_as_bytes(checksum="crc32c"))


@pytest.mark.parametrize("case", CASES)
def test_reader_gives_what_the_storage_client_gives(case, objects, sample_jpeg):
    uri = objects[case]
    reader = gcs.GcsReader({})
    budget = ByteBudget(8 * MB)
    ours, our_error = outcome(lambda: reader.read(uri, 8 * MB, MB, budget))
    theirs, their_error = client_download(uri)

    assert ours == theirs
    if their_error is None:
        assert our_error is None
        assert budget.used == len(ours)  # what is returned is held, nothing else
    else:
        assert our_error is not None, f"the client failed ({their_error!r}), the reader not"
        assert budget.used == 0
        ours_reason, their_reason = (v.reason_for(v.READ, e) for e in (our_error, their_error))
        assert ours_reason == their_reason
        if type(their_error).__name__ in ("NotFound", "Forbidden"):
            assert type(our_error) is type(their_error)
        else:  # a bad checksum: different classes, one reason, both named in vocabulary.py
            assert v._READ_REASONS_BY_TYPE[type(our_error).__name__] == ours_reason
            assert v._READ_REASONS_BY_TYPE[type(their_error).__name__] == their_reason

    # The cases say what they should, so the comparison above is not of two wrong answers.
    expected = {PLAIN: sample_jpeg, GZIPPED: sample_jpeg, EMPTY: b""}
    assert ours == expected.get(case)
    reasons = {MISSING: v.NOT_FOUND, FORBIDDEN: v.NO_ACCESS}
    if our_error is not None:
        assert v.reason_for(v.READ, our_error) == reasons.get(case, v.READ_FAILED)
