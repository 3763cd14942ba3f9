"""nydusd's `http-proxy` backend (config v2 only): blobs from a plain HTTP server.

With `addr` an http:// or https:// URL, blob `<id>` is `GET <addr>/<path>/<id>` with `Range`: the
registry backend's client without its registry paths (so the proxy, mirrors, TLS options,
timeouts and retries work alike; a server asking for credentials is an error). With `addr` the
absolute path of a Unix socket, every read is `GET /` on that socket with `Range`, whatever the
blob id, as nydusd does: a local server exposing one blob.
"""

from __future__ import annotations

import os
import stat
import threading
import time

from .backends import Backend, http_limits, retrying
from .registry import RegistryBackend, _body, scrub_queries
from .storage_errors import BackendError, TemporaryBackendError


def make_http_proxy(config: dict) -> Backend:
    """The backend for an http-proxy config: over TCP or over a Unix socket."""
    addr = config.get("addr") or ""
    if addr.startswith(("http://", "https://")):
        path = (config.get("path") or "").strip("/")
        base = addr.rstrip("/") + "/" + (path + "/" if path else "")
        return RemoteHttpBackend(config, base=base)
    return UnixSocketBackend(config)


class RemoteHttpBackend(RegistryBackend):
    """The registry client on plain blob URLs (no registry credentials to replace)."""

    kind = "http-proxy"
    set_auth = Backend.set_auth


class UnixSocketBackend(Backend):
    """Every read is `GET /` with `Range` on the Unix socket `addr` (one blob per socket)."""

    kind = "http-proxy"

    def __init__(self, config: dict) -> None:
        super().__init__()
        addr = config.get("addr") or ""
        if not os.path.isabs(addr):
            raise BackendError(f"http-proxy 'addr' must be an http:// or https:// URL or the "
                               f"absolute path of a Unix socket, not {addr[:80]!r}")
        try:
            mode = os.stat(addr).st_mode
        except OSError as e:
            raise BackendError(f"http-proxy 'addr' {addr}: {e.strerror}") from None
        if not stat.S_ISSOCK(mode):
            raise BackendError(f"http-proxy 'addr' {addr} is not a Unix socket")
        self.path = addr
        self.timeout, self.retries = http_limits(config)
        self.local = threading.local()

    def _pool(self):
        pool = getattr(self.local, "pool", None)
        if pool is None:
            import urllib3

            from .httpwatch import unix_connection_class

            pool = urllib3.HTTPConnectionPool("localhost", maxsize=1)
            pool.ConnectionCls = unix_connection_class(self.path)
            self.local.pool = pool
        return pool

    def _read(self, blob_id: str, offset: int, size: int, direct: bool) -> bytes:
        return retrying(self.retries, lambda: self._attempt(offset, size),
                        f"blob {blob_id} range {offset}+{size} from {self.path}", self.note_retry)

    def _attempt(self, offset: int, size: int) -> bytes:
        import urllib3

        try:
            resp = self._pool().urlopen(
                "GET", "/", headers={"Range": f"bytes={offset}-{offset + size - 1}"},
                preload_content=False, retries=False, redirect=False,
                timeout=urllib3.Timeout(connect=self.timeout[0], read=self.timeout[1]))
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TemporaryBackendError(f"GET / on {self.path}: {type(e).__name__}: "
                                        f"{scrub_queries(str(e))}") from None
        deadline = time.monotonic() + self.timeout[1] if self.timeout[1] else None
        return _body(_Answer(resp), offset, size, deadline)


class _Answer:
    """A urllib3 response as `_body` reads one (a requests response's names)."""

    def __init__(self, resp) -> None:
        self.raw = resp
        self.status_code = resp.status
        self.headers = resp.headers

    def close(self) -> None:
        self.raw.close()

