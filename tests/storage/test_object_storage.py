"""nydusd's `oss` and `s3` backends against object stores on 127.0.0.1 that check every request's
signature: S3 Signature Version 4 checked with botocore (AWS's own Python signer, an independent
implementation), OSS's HMAC-SHA1 scheme checked as Alibaba documents it. A request whose
signature does not check out is refused with 403, as the real services do."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import re
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

import rafs
from daemon.backends import make_backend
from daemon.config import ConfigError, parse_config_text
from daemon.storage import BlobStore, StorageOptions
from daemon.storage_errors import BackendError
from rafs.localblob import walk
from tests.servers import ScriptedServer

KEY_ID, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
_S3_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/s3/aws4_request, "
                      r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})")


def s3_signature_ok(h: BaseHTTPRequestHandler, region: str) -> bool:
    """Whether the request's SigV4 Authorization is right for KEY_ID/SECRET, by botocore."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    m = _S3_AUTH.fullmatch(h.headers.get("Authorization", ""))
    if not m or m.group(1) != KEY_ID or m.group(3) != region:
        return False
    signed = m.group(4).split(";")
    if not {"host", "range", "x-amz-date", "x-amz-content-sha256"} <= set(signed):
        return False
    req = AWSRequest(method=h.command, url=f"http://{h.headers['Host']}{h.path}",
                     headers={k: h.headers[k] for k in signed if k != "host"})
    req.context["timestamp"] = h.headers["x-amz-date"]
    signer = S3SigV4Auth(Credentials(KEY_ID, SECRET), "s3", region)
    want = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
    return hmac.compare_digest(want, m.group(5)) and h.headers["x-amz-date"][:8] == m.group(2)


def oss_signature_ok(h: BaseHTTPRequestHandler, bucket: str) -> bool:
    """Whether the request's `OSS id:signature` is right, per Alibaba's OSS documentation: an
    HMAC-SHA1 over VERB, Content-MD5, Content-Type, Date, the x-oss- headers and
    /bucket/object; the Date within 15 minutes of now."""
    m = re.fullmatch(r"OSS ([^:]+):(\S+)", h.headers.get("Authorization", ""))
    date = h.headers.get("Date", "")
    if not m or m.group(1) != KEY_ID or not date:
        return False
    if abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) > 900:
        return False
    obj = urllib.parse.unquote(urllib.parse.urlsplit(h.path).path)
    text = (f"{h.command}\n{h.headers.get('Content-MD5', '')}\n{h.headers.get('Content-Type', '')}"
            f"\n{date}\n/{bucket}{obj}")
    mac = hmac.new(SECRET.encode(), text.encode(), hashlib.sha1).digest()
    return hmac.compare_digest(base64.b64encode(mac).decode(), m.group(2))


def ObjectStore(objects: dict[str, bytes], check) -> ScriptedServer:  # noqa: N802 - a server
    """A threaded object store on 127.0.0.1: `objects` maps a URL path to bytes, served with
    Range; `check(handler)` says whether a request's signature is good (else 403). It also takes
    absolute-form requests, as a forward proxy in front of the store (OSS names the bucket in
    the host, which has no DNS here). `.paths()` lists the object paths asked for."""

    def respond(h: BaseHTTPRequestHandler):
        parts = urllib.parse.urlsplit(h.path)
        if parts.netloc:  # absolute form: we are the proxy; Host must agree
            if h.headers["Host"] != parts.netloc:
                return 400, {}, b"Host disagrees with the request target"
            h.path = parts.path
        if not check(h):
            return 403, {}, b"<Error><Code>SignatureDoesNotMatch</Code></Error>"
        data = objects.get(urllib.parse.unquote(h.path))
        if data is None:
            return 404, {}, b"<Error><Code>NoSuchKey</Code></Error>"
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", h.headers.get("Range", ""))
        if not m:
            return 200, {}, data
        a, b = int(m.group(1)), min(int(m.group(2)), len(data) - 1)
        return 206, {"Content-Range": f"bytes {a}-{b}/{len(data)}"}, data[a:b + 1]

    server = ScriptedServer(respond)
    server.paths = lambda: [urllib.parse.urlsplit(p).path for _m, p, _h in server.seen]
    return server


def _objects(image_dir: Path, prefix: str) -> dict[str, bytes]:
    return {prefix + p.name: p.read_bytes() for p in (image_dir / "blobs").iterdir()}


def _read_all(image: rafs.Image, store: BlobStore) -> dict[bytes, bytes]:
    return {p: store.read(image.chunks(i.ino, 0, i.size)) for p, i in walk(image) if i.is_reg}


def _source_files(src: Path) -> dict[bytes, bytes]:
    return {b"/" + bytes(p.relative_to(src)): p.read_bytes()
            for p in src.rglob("*") if p.is_file() and not p.is_symlink()}


def test_s3_reads_every_file_with_requests_botocore_accepts(sample_v6):
    image_dir, src = sample_v6
    store_srv = ObjectStore(_objects(image_dir, "/images/nydus v2/"),
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
    store_srv = ObjectStore(_objects(image_dir, "/images/"), lambda h: s3_signature_ok(h, "us-east-1"))
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
    store_srv = ObjectStore(_objects(image_dir, "/pub/") | _objects(image_dir, "/"),
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

    store_srv = ObjectStore(_objects(image_dir, "/nydus/"), check)
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
                                                    "a int"),  # (the value not shown)
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
    with pytest.raises(ConfigError, match="oss backend needs 'endpoint'"):
        parse_config_text('{"device": {"backend": {"type": "oss", "config": {"bucket_name": "b"}}},'
                          ' "mode": "direct"}')
