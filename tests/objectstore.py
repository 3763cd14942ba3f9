"""An object store on 127.0.0.1 for the oss and s3 backends' tests: it serves objects with Range
and checks every request's signature, S3 Signature Version 4 with botocore (AWS's own Python
signer, an independent implementation) and OSS's HMAC-SHA1 scheme as Alibaba documents it; a
request whose signature does not check out gets 403, as from the real services."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import re
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path

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


def objects_of(image_dir: Path, prefix: str) -> dict[str, bytes]:
    """The blobs of an image directory as objects: URL path (prefix + blob id) -> bytes."""
    return {prefix + p.name: p.read_bytes() for p in (image_dir / "blobs").iterdir()}


