"""nydusd's `oss` and `s3` backends against object stores on 127.0.0.1 that check every request's
signature (tests/objectstore.py: S3's with botocore's signer), and their config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rafs
from daemon.backends import make_backend
from daemon.config import ConfigError, parse_config_text
from daemon.storage import BlobStore, StorageOptions
from daemon.storage_errors import BackendError
from rafs.localblob import walk
from tests.objectstore import (
    KEY_ID,
    SECRET,
    ObjectStore,
    objects_of,
    oss_signature_ok,
    s3_signature_ok,
)


def _read_all(image: rafs.Image, store: BlobStore) -> dict[bytes, bytes]:
    return {p: store.read(image.chunks(i.ino, 0, i.size)) for p, i in walk(image) if i.is_reg}


def _source_files(src: Path) -> dict[bytes, bytes]:
    return {b"/" + bytes(p.relative_to(src)): p.read_bytes()
            for p in src.rglob("*") if p.is_file() and not p.is_symlink()}


def test_s3_reads_every_file_with_requests_botocore_accepts(sample_v6):
    image_dir, src = sample_v6
    store_srv = ObjectStore(objects_of(image_dir, "/images/nydus v2/"),
                            lambda h: s3_signature_ok(h, "eu-central-1"))
    try:
        image = rafs.open_image(image_dir / "bootstrap")
        store = BlobStore(image, StorageOptions("s3", {
            "scheme": "http", "endpoint": f"127.0.0.1:{store_srv.port}", "region": "eu-central-1",
            "bucket_name": "images", "object_prefix": "nydus v2/", "access_key_id": KEY_ID,
            "access_key_secret": SECRET}, cache_type=""))
        got = _read_all(image, store)
        assert got == _source_files(src)
        assert store_srv.paths() and all(p.startswith("/images/nydus%20v2/") for p in store_srv.paths())
        assert store.metrics()["backend_type"] == "oss"  # nydusd reports S3 as "oss"
    finally:
        store_srv.stop()


def test_s3_with_a_wrong_secret_fails_with_the_403_not_wrong_data(sample_v6):
    image_dir, _src = sample_v6
    store_srv = ObjectStore(objects_of(image_dir, "/images/"), lambda h: s3_signature_ok(h, "us-east-1"))
    try:
        backend = make_backend("s3", {"scheme": "http", "endpoint": f"127.0.0.1:{store_srv.port}",
                                      "bucket_name": "images", "access_key_id": KEY_ID,
                                      "access_key_secret": SECRET + "x", "retry_limit": 2})
        blob_id = next((image_dir / "blobs").iterdir()).name
        with pytest.raises(BackendError, match="403.*SignatureDoesNotMatch"):
            backend.read(blob_id, 0, 10)
        assert len(store_srv.seen) == 1  # a refusal is not retried
        # the right secret, and no region given: us-east-1, as AWS's default; an endpoint in
        # capitals is signed as the client sends it in Host: in lower case
        good = make_backend("s3", {"scheme": "http", "endpoint": f"LocalHost:{store_srv.port}",
                                   "bucket_name": "images", "access_key_id": KEY_ID,
                                   "access_key_secret": SECRET})
        assert good.read(blob_id, 5, 10) == (image_dir / "blobs" / blob_id).read_bytes()[5:15]
    finally:
        store_srv.stop()


def test_a_public_bucket_is_read_without_signing(sample_v6):
    image_dir, _src = sample_v6
    # S3 names the bucket in the path, OSS in the host
    store_srv = ObjectStore(objects_of(image_dir, "/pub/") | objects_of(image_dir, "/"),
                            lambda h: "Authorization" not in h.headers)
    try:
        blob = next((image_dir / "blobs").iterdir())
        for kind in ("s3", "oss"):
            backend = make_backend(kind, {
                "scheme": "http", "endpoint": f"127.0.0.1:{store_srv.port}", "bucket_name": "pub",
                **({"proxy": {"url": f"http://127.0.0.1:{store_srv.port}", "fallback": False},
                    "endpoint": "oss.example"} if kind == "oss" else {})})
            assert backend.read(blob.name, 1, 100) == blob.read_bytes()[1:101]
    finally:
        store_srv.stop()


def test_oss_through_a_proxy_reads_every_file_signed(sample_v6):
    """OSS puts the bucket in the host name; the store here is reached as a forward proxy (as
    a Dragonfly dfdaemon would be), and checks both the host and the signature."""
    image_dir, src = sample_v6

    def check(h) -> bool:
        return h.headers["Host"] == "images.oss-test.example:8080" and oss_signature_ok(h, "images")

    store_srv = ObjectStore(objects_of(image_dir, "/nydus/"), check)
    try:
        cfg = parse_config_text(
            'version = 2\n[backend]\ntype = "oss"\n[backend.oss]\nscheme = "http"\n'
            'endpoint = "oss-test.example:8080"\nbucket_name = "images"\nobject_prefix = "nydus/"\n'
            f'access_key_id = "{KEY_ID}"\naccess_key_secret = "{SECRET}"\n'
            f'[backend.oss.proxy]\nurl = "http://127.0.0.1:{store_srv.port}"\nfallback = false\n')
        assert cfg.redacted()["backend"]["oss"]["access_key_secret"] != SECRET
        image = rafs.open_image(image_dir / "bootstrap")
        store = BlobStore(image, StorageOptions("oss", cfg.storage.backend_config, cache_type=""))
        assert _read_all(image, store) == _source_files(src)
        assert store_srv.paths() and all(p.startswith("/nydus/") for p in store_srv.paths())
    finally:
        store_srv.stop()


@pytest.mark.parametrize("fields, error", [
    ({"endpoint": "s3.example"}, "needs 'bucket_name'"),
    ({"endpoint": "https://s3.example", "bucket_name": "b"}, "must be host\\[:port\\]"),
    ({"bucket_name": "a/b"}, "is not a bucket name"),
    ({"bucket_name": "b", "access_key_id": "id"}, "go together"),
    ({"bucket_name": "b", "mirrors": [{"host": "http://m"}]}, "'mirrors' are for"),
    ({"bucket_name": "b", "access_key_secret": 7}, "'access_key_secret' must be a string, not "
                                                    "a value of type int"),  # (not the value)
    ({"bucket_name": "..", "endpoint": "s3.example"}, "not a bucket name"),
    ({"bucket_name": "bücket", "endpoint": "s3.example"}, "not a bucket name"),
    ({"bucket_name": "b", "object_prefix": "a/../b/"}, "'.' or '..' segment"),
    ({"bucket_name": "b", "object_prefix": "./x"}, "'.' or '..' segment"),
    ({"bucket_name": "b", "endpoint": "host:"}, "must be host\\[:port\\]"),
    ({"bucket_name": "b", "endpoint": "bücher.example"}, "must be host\\[:port\\]"),
    ({"bucket_name": "b", "endpoint": "u:secret@host"}, "not 'host'"),
    ({"bucket_name": "b", "region": "us-east-1\r\nX-Evil: 1"}, "'region' must be"),
    ({"bucket_name": "b", "access_key_id": "AK\r\nX: 1", "access_key_secret": "s"},
     "'access_key_id' must be printable"),
    ({"bucket_name": "b", "access_key_id": "AK:ID", "access_key_secret": "s"},
     "'access_key_id' must be printable"),
])
def test_bad_object_storage_configs_are_refused_naming_the_field(fields, error):
    text = json.dumps({"device": {"backend": {"type": "s3", "config": fields}}, "mode": "direct"})
    with pytest.raises((ConfigError, BackendError), match=error) as e:
        cfg = parse_config_text(text)
        make_backend("s3", cfg.storage.backend_config)
    assert "secret" not in str(e.value).replace("access_key_secret", "")


def test_oss_needs_an_endpoint_and_a_bucket_fit_for_a_host_name():
    with pytest.raises(BackendError, match="oss backend needs 'endpoint'"):
        make_backend("oss", {"bucket_name": "b"})
    for bucket in ("MyBucket", "my_bucket"):  # the bucket is a label of the host name
        with pytest.raises(BackendError, match="is not a bucket name"):
            make_backend("oss", {"bucket_name": bucket, "endpoint": "oss.example"})
    with pytest.raises(ConfigError, match="'localdisk' is not supported"):
        parse_config_text('{"device": {"backend": {"type": "localdisk", "config": {}}},'
                          ' "mode": "direct"}')


@pytest.mark.parametrize("endpoint, scheme, base", [
    ("S3.Example:09000", "http", "http://s3.example:9000/b/"),  # as a client sends Host
    ("s3.example:443", "https", "https://s3.example/b/"),
    ("s3.example:0443", "https", "https://s3.example/b/"),
    ("s3.example:80", "https", "https://s3.example:80/b/"),
    ("[::1]:9000", "http", "http://[::1]:9000/b/"),
])
def test_the_endpoint_is_written_as_the_host_header_will_be(endpoint, scheme, base):
    backend = make_backend("s3", {"endpoint": endpoint, "scheme": scheme, "bucket_name": "b"})
    assert backend.base == base


@pytest.mark.parametrize("endpoint", ["s3.example:0", "s3.example:99999", "s3.example:"])
def test_an_endpoint_port_out_of_range_is_refused_at_start(endpoint):
    with pytest.raises(BackendError, match="must be host\\[:port\\]"):
        make_backend("s3", {"endpoint": endpoint, "bucket_name": "b"})
