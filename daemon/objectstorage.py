"""nydusd's `oss` and `s3` backends: blobs as objects of a bucket, each request signed.

- s3: path style, `<scheme>://<endpoint>/<bucket>/<object_prefix><blob_id>`, signed with AWS
  Signature Version 4 (service `s3`; signed: host, range, x-amz-content-sha256 (the hash of the
  empty payload), x-amz-date and any NYDUS_HEADER_ header). `endpoint` defaults to
  s3.amazonaws.com, `region` to us-east-1 (nydusd signs an empty region, which AWS refuses).
- oss: `<scheme>://<bucket>.<endpoint>/<object_prefix><blob_id>`, signed with
  `Authorization: OSS <access_key_id>:<base64 HMAC-SHA1>` over the verb, empty Content-MD5 and
  Content-Type, the Date header and `/<bucket>/<object_prefix><blob_id>`.

Without access keys a request goes unsigned (a public bucket). Requests are ranged GETs through
the registry backend's client, so the proxy, TLS options, timeouts and retries work alike and
answers are checked alike; each attempt is signed anew. As in nydusd, redirects are not
followed, and neither backend falls back from https to http.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import hmac
import re
import urllib.parse

from .backends import Backend
from .registry import RegistryBackend
from .storage_errors import BackendError

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
S3_DEFAULT_ENDPOINT = "s3.amazonaws.com"
S3_DEFAULT_REGION = "us-east-1"
_KEY_SAFE = "/-_.~"  # what stays unescaped in an object key's URL path (AWS's URI encoding)


def make_object_storage(kind: str, config: dict) -> Backend:
    """The backend for an `oss` or `s3` config."""
    return S3Backend(config) if kind == "s3" else OssBackend(config)


_HOST = re.compile(r"([a-z0-9-]+(?:\.[a-z0-9-]+)*\.?|\[[0-9a-f:.]+\])(?::([0-9]+))?")
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # S3 (path style: a path segment)
_OSS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]*")  # OSS's rule (a label of the host name)
_REGION = re.compile(r"[a-z0-9-]+")
_KEY_ID = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no whitespace


def _endpoint(config: dict, kind: str, scheme: str, default: str = "") -> str:
    """host[:port] as a client sends it in Host, which S3's signature covers: in lower case,
    the port as a plain number, the scheme's default port left out."""
    endpoint = (config.get("endpoint") or default).lower()
    if not endpoint:
        raise BackendError(f"{kind} backend needs 'endpoint'")
    m = _HOST.fullmatch(endpoint)
    port = int(m.group(2)) if m and m.group(2) is not None else None
    if not m or port is not None and not 1 <= port <= 65535:
        shown = endpoint.rpartition("@")[2][:80]
        raise BackendError(f"{kind} 'endpoint' must be host[:port] (ASCII; the scheme goes in "
                           f"'scheme'), not {shown!r}")
    if port is None or port == (443 if scheme == "https" else 80):
        return m.group(1)
    return f"{m.group(1)}:{port}"


class _ObjectStorage(RegistryBackend):
    """The registry client on signed object URLs: no registry credentials, no redirects.
    Subclasses say where an object is (`_base`) and how a request is signed (`_sign`)."""

    set_auth = Backend.set_auth
    bucket_pattern = _BUCKET
    default_endpoint = ""

    def __init__(self, config: dict) -> None:
        kind = self.kind
        scheme = "http" if config.get("scheme") == "http" else "https"
        endpoint = _endpoint(config, kind, scheme, self.default_endpoint)
        self.bucket = config.get("bucket_name") or ""
        if not self.bucket:
            raise BackendError(f"{kind} backend needs 'bucket_name'")
        if not self.bucket_pattern.fullmatch(self.bucket):
            raise BackendError(f"{kind} 'bucket_name' {self.bucket[:80]!r} is not a bucket name")
        prefix = config.get("object_prefix") or ""
        if any(seg in (".", "..") for seg in prefix.split("/")):  # a client resolves them away:
            # the object asked for would not be the one signed
            raise BackendError(f"{kind} 'object_prefix' {prefix[:80]!r} has a '.' or '..' segment")
        super().__init__(config, base=self._base(scheme, endpoint,
                                                 urllib.parse.quote(prefix, safe=_KEY_SAFE)))
        self.may_downgrade = False  # nydusd downgrades registries only
        self.key_id = config.get("access_key_id") or ""
        self.secret = config.get("access_key_secret") or ""
        if bool(self.key_id) != bool(self.secret):
            raise BackendError(f"{kind} backend: 'access_key_id' and 'access_key_secret' go "
                               "together")
        if self.key_id and (not _KEY_ID.fullmatch(self.key_id) or ":" in self.key_id):
            raise BackendError(f"{kind} 'access_key_id' must be printable ASCII without spaces "
                               "or ':'")

    def _base(self, scheme: str, endpoint: str, prefix: str) -> str:
        """The URL blob ids are appended to."""
        raise NotImplementedError

    def _send(self, url: str, headers: dict, blob_id: str, or_direct: bool = True):
        hdrs = dict(headers)
        if self.key_id:
            self._sign(url, hdrs)
        return self._via_proxy_or_direct(url, hdrs, or_direct)

    def _sign(self, url: str, headers: dict) -> None:
        raise NotImplementedError


class S3Backend(_ObjectStorage):
    """Blobs at `<scheme>://<endpoint>/<bucket>/<object_prefix><blob_id>`, SigV4-signed."""

    kind = "s3"
    metrics_kind = "oss"  # what nydusd's metrics call an S3 backend
    default_endpoint = S3_DEFAULT_ENDPOINT

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        self.region = config.get("region") or S3_DEFAULT_REGION
        if not _REGION.fullmatch(self.region):
            raise BackendError(f"s3 'region' must be lower-case letters, digits and '-', not "
                               f"{self.region[:40]!r}")

    def _base(self, scheme: str, endpoint: str, prefix: str) -> str:
        return f"{scheme}://{endpoint}/{self.bucket}/{prefix}"

    def _sign(self, url: str, headers: dict) -> None:
        parts = urllib.parse.urlsplit(url)
        now = datetime.datetime.now(datetime.UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = EMPTY_SHA256
        signed = {"host": parts.netloc.rpartition("@")[2]}
        for name, value in (*self.extra_headers.items(), *headers.items()):
            signed[name.lower()] = " ".join(str(value).split())
        names = ";".join(sorted(signed))
        canonical = "\n".join(["GET", parts.path or "/", parts.query,
                               "".join(f"{k}:{signed[k]}\n" for k in sorted(signed)), names,
                               EMPTY_SHA256])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self.secret).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.key_id}/{scope}, "
                                    f"SignedHeaders={names}, Signature={signature}")


class OssBackend(_ObjectStorage):
    """Blobs at `<scheme>://<bucket>.<endpoint>/<object_prefix><blob_id>`, OSS-signed."""

    kind = "oss"
    bucket_pattern = _OSS_BUCKET  # it becomes part of the host name, which a client lowercases

    def _base(self, scheme: str, endpoint: str, prefix: str) -> str:
        return f"{scheme}://{self.bucket}.{endpoint}/{prefix}"

    def _sign(self, url: str, headers: dict) -> None:
        date = email.utils.formatdate(usegmt=True)
        resource = f"/{self.bucket}{urllib.parse.unquote(urllib.parse.urlsplit(url).path)}"
        oss_headers = "".join(f"{k.lower()}:{v}\n" for k, v in sorted(
            (k.lower(), v) for k, v in (*self.extra_headers.items(), *headers.items())
            if k.lower().startswith("x-oss-")))
        to_sign = f"GET\n\n\n{date}\n{oss_headers}{resource}"
        mac = hmac.new(self.secret.encode(), to_sign.encode(), hashlib.sha1).digest()
        headers["Date"] = date
        headers["Authorization"] = f"OSS {self.key_id}:{base64.b64encode(mac).decode()}"
