"""gs:// reads without Beam: media URLs, stored-checksum checks against published test
vectors, and the proxy and CA settings taken from the environment as requests takes them."""

from __future__ import annotations

import pytest
import urllib3

from transforms.storage import gcs

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


def test_the_environment_s_proxy_and_ca_bundle_are_used(monkeypatch, tmp_path):
    clear_proxy_env(monkeypatch)
    bundle = tmp_path / "ca.pem"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    pool = gcs.environment_pool("https://storage.googleapis.com", 8)
    assert isinstance(pool, urllib3.ProxyManager)
    assert pool.proxy.host == "proxy.example" and pool.proxy.port == 3128
    assert pool.connection_pool_kw["ca_certs"] == str(bundle)
    assert pool.connection_pool_kw["maxsize"] == 8


def test_no_proxy_bypasses_it_and_certifi_is_the_default_bundle(monkeypatch):
    import certifi

    clear_proxy_env(monkeypatch)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", ".googleapis.com")
    pool = gcs.environment_pool("https://storage.googleapis.com", 8)
    assert type(pool) is urllib3.PoolManager
    assert pool.connection_pool_kw["ca_certs"] == certifi.where()
    # A plain-HTTP endpoint (an emulator) takes HTTP_PROXY, not HTTPS_PROXY.
    assert type(gcs.environment_pool("http://127.0.0.1:9", 8)) is urllib3.PoolManager
