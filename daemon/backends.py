"""Blob backends: they know blob ids and byte ranges, nothing else.

`LocalfsBackend` reads `<dir>/<blob_id>`; `RegistryBackend` (daemon/registry.py) speaks the OCI
distribution blob API (`GET /v2/<repo>/blobs/sha256:<id>` with `Range`), with basic and bearer
auth, hand-followed redirects (no credentials to other hosts), an optional forward proxy with
fallback, and retries with exponential backoff and jitter for temporary failures. On its client:
http-proxy (daemon/httpproxy.py), oss and s3 (daemon/objectstorage.py).
"""

from __future__ import annotations

import base64
import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable

from rafs import is_valid_blob_id

from .metrics import backend_latency_bucket, size_bucket
from .storage_errors import BackendError, TemporaryBackendError

log = logging.getLogger(__name__)

DEFAULT_RETRIES = 3
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 2.0


def check_blob_id(blob_id: str) -> str:
    """Return blob_id if it is 64 lowercase hex digits; raise BackendError otherwise."""
    if not is_valid_blob_id(blob_id):
        raise BackendError(f"refusing blob id {blob_id[:80]!r}: not 64 lowercase hex digits")
    return blob_id


MAX_BLOB_END = 1 << 62  # past this no offset is real (and os.pread would overflow)


class Backend:
    """Reads exact byte ranges of blobs. Thread-safe."""

    kind = "none"

    @property
    def metrics_kind(self) -> str:
        """`backend_type` in the metrics: the kind, unless nydusd names it otherwise."""
        return self.kind

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stats = {"read_count": 0, "read_errors": 0, "read_retries": 0,
                      "read_amount_total": 0, "read_cumulative_latency_millis_total": 0,
                      # nydusd's histograms: by request size slot, and size x latency slot
                      "read_cumulative_latency_millis_dist": [0] * 8,
                      "read_count_block_size_dist": [0] * 8,
                      "read_latency_sizes_dist": [[0] * 8 for _ in range(8)]}

    def set_auth(self, auth: str) -> None:
        """Replace the credentials (base64 of user:password); registries only."""
        raise BackendError(f"registry_auth does not apply to a {self.kind} backend")

    def read(self, blob_id: str, offset: int, size: int, direct: bool = False) -> bytes:
        """Exactly `size` bytes at `offset` of blob `blob_id`. `direct`: the last answer for this
        range held bad data, so ask the source itself, not a mirror in between."""
        check_blob_id(blob_id)
        start = time.monotonic()
        try:
            if offset < 0 or size < 0 or offset + size > MAX_BLOB_END:
                raise BackendError(f"range {offset}+{size} lies outside any blob")
            data = self._read(blob_id, offset, size, direct)
        except BackendError:
            with self.lock:
                self.stats["read_errors"] += 1
            raise
        except Exception as e:  # a bug or a library's surprise: an error of this read, not a crash
            log.exception("%s read of blob %s failed unexpectedly", self.kind, blob_id)
            with self.lock:
                self.stats["read_errors"] += 1
            raise BackendError(f"{type(e).__name__}: {e}") from None
        ms = (time.monotonic() - start) * 1000
        log.debug("%s read blob %s bytes %d-%d: %.1f ms", self.kind, blob_id, offset,
                  offset + size - 1, ms)
        with self.lock:
            self.stats["read_count"] += 1
            self.stats["read_amount_total"] += len(data)
            self.stats["read_cumulative_latency_millis_total"] += int(ms)
            slot = size_bucket(size)
            self.stats["read_cumulative_latency_millis_dist"][slot] += int(ms)
            self.stats["read_count_block_size_dist"][slot] += 1
            self.stats["read_latency_sizes_dist"][slot][backend_latency_bucket(ms)] += 1
        return data

    def snapshot(self) -> dict:
        """A copy of the counters (histograms included), taken under the lock."""
        with self.lock:
            return {k: [list(x) if isinstance(x, list) else x for x in v] if isinstance(v, list)
                    else v for k, v in self.stats.items()}

    def _read(self, blob_id: str, offset: int, size: int, direct: bool) -> bytes:
        raise NotImplementedError

    def note_retry(self) -> None:
        """Count one retried request (a temporary failure)."""
        with self.lock:
            self.stats["read_retries"] += 1

    def close(self) -> None:
        """Release files and connections."""


class LocalfsBackend(Backend):
    """Blobs in a local directory (`dir`, `alt_dirs`) or one fixed `blob_file`."""

    kind = "localfs"

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.dirs = [d for d in [config.get("dir"), *config.get("alt_dirs", [])] if d]
        self.blob_file = config.get("blob_file") or None
        if not self.dirs and not self.blob_file:
            raise BackendError("localfs backend needs 'dir' or 'blob_file'")
        self.fds: dict[str, int] = {}

    def _open(self, blob_id: str) -> int:
        fd = self.fds.get(blob_id)
        if fd is not None:
            return fd
        paths = [self.blob_file] if self.blob_file else [os.path.join(d, blob_id) for d in self.dirs]
        for path in paths:
            try:
                if os.path.getsize(path) == 0 and path is not paths[-1]:
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                break
            except OSError:
                continue
        else:
            raise BackendError(f"blob {blob_id} not found in {', '.join(paths)}")
        with self.lock:
            if blob_id in self.fds:
                os.close(fd)
                return self.fds[blob_id]
            self.fds[blob_id] = fd
        return fd

    def _read(self, blob_id: str, offset: int, size: int, direct: bool) -> bytes:
        try:
            data = os.pread(self._open(blob_id), size, offset)
        except OSError as e:
            raise BackendError(f"reading blob {blob_id}: {e.strerror}") from None
        if len(data) != size:
            raise BackendError(f"blob {blob_id} is too short: wanted {size} bytes at {offset}, "
                               f"got {len(data)}")
        return data

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def retrying(attempts: int, op: Callable[[], bytes], what: str,
             on_retry: Callable[[], None] | None = None) -> bytes:
    """Run op, retrying TemporaryBackendError with exponential backoff and full jitter."""
    for attempt in range(attempts + 1):
        try:
            return op()
        except TemporaryBackendError as e:
            if attempt == attempts:
                raise BackendError(f"{what}: giving up after {attempts + 1} attempts: {e}") from None
            delay = random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** attempt))
            if on_retry is not None:
                on_retry()
            log.warning("%s: %s; retry %d/%d in %.2fs", what, e, attempt + 1, attempts, delay)
            time.sleep(delay)
        except BackendError as e:  # for good: say which blob and range
            raise BackendError(f"{what}: {e}") from None
    raise AssertionError("unreachable")


def http_limits(config: dict) -> tuple[tuple[float | None, float | None], int]:
    """An HTTP backend's (connect, whole-request) timeouts in seconds (None: no limit, from 0)
    and its retry count (retry_limit, at least DEFAULT_RETRIES)."""
    connect, total = config.get("connect_timeout", 5), config.get("timeout", 5)
    return (connect or None, total or None), max(int(config.get("retry_limit", 0) or 0),
                                                 DEFAULT_RETRIES)


def make_backend(kind: str, config: dict) -> Backend:
    """Build the backend named by nydusd's `backend.type` from its config fields."""
    if kind == "localfs":
        return LocalfsBackend(config)
    if kind == "registry":
        from .registry import RegistryBackend

        return RegistryBackend(config)
    if kind == "http-proxy":
        from .httpproxy import make_http_proxy

        return make_http_proxy(config)
    if kind in ("oss", "s3"):
        from .objectstorage import make_object_storage

        return make_object_storage(kind, config)
    raise BackendError(f"backend type {kind!r} is not supported (use registry, http-proxy, "
                       "localfs, oss or s3)")


def no_userinfo(url: str) -> str:
    """A URL or host[:port] without its user:password@ part (for logs, errors and the API)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # through the last @: a password may hold / ? or # unencoded (users type them so), and then
    # the authority seems to end early; a URL of ours has no @ past it
    return scheme + sep + rest.rpartition("@")[2]


def url_for_log(url: str) -> str:
    """A URL fit for a log line or the API: no user:password@, no query (presigned URLs and
    tokens live there), no fragment."""
    return urllib.parse.urlsplit(no_userinfo(url))._replace(query="", fragment="").geturl()


def basic_auth_header(auth: str, source: str = "registry 'auth'") -> str:
    """Validate nydusd's `auth` (base64 of user:password) and return the header value; errors
    name `source`, where the value came from."""
    try:
        decoded = base64.b64decode(auth, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise BackendError(f"{source} is not valid base64") from None
    if ":" not in decoded:
        raise BackendError(f"{source} must encode user:password")
    return "Basic " + auth


def same_origin(a: str, b: str) -> bool:
    pa, pb = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    return (pa.scheme, pa.netloc) == (pb.scheme, pb.netloc)
