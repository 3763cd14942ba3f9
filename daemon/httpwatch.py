"""A time limit on a server's response headers.

requests' read timeout bounds each socket read, not the whole answer: a server that sends its
headers a byte at a time holds a request (and the FUSE read waiting on it) for as long as it
likes. `session()` gives a requests session whose connections must receive their complete
response headers within the read timeout of the request; when that passes, one watchdog thread
shuts the socket down and the request fails like any broken connection. (Bodies are bounded by
their readers' own deadlines.)
"""

from __future__ import annotations

import heapq
import itertools
import socket
import ssl
import threading
import time

import requests
import urllib3.connection
import urllib3.connectionpool
import urllib3.poolmanager


class _Watchdog:
    """Shuts down the sockets whose deadline passes before they are released."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.heap: list = []
        self.ids = itertools.count()
        self.thread: threading.Thread | None = None

    def watch(self, sock, seconds: float) -> list:
        """Watch `sock` for `seconds`; release the returned entry with `done`."""
        entry = [time.monotonic() + seconds, next(self.ids), sock, False]  # [3]: it fired
        with self.cond:
            heapq.heappush(self.heap, entry)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name="http-header-watchdog")
                self.thread.start()
            if self.heap[0] is entry:
                self.cond.notify()
        return entry

    def done(self, entry: list) -> bool:
        """Release `entry`; True when its deadline had passed (its socket is shut)."""
        with self.cond:
            entry[2] = None  # (left in the heap; dropped when its time comes)
            return entry[3]

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.heap or self.heap[0][0] > time.monotonic():
                    self.cond.wait(self.heap[0][0] - time.monotonic() if self.heap else None)
                entry = heapq.heappop(self.heap)
                if entry[2] is not None:  # still waiting: shut it, under the lock, so that
                    entry[3] = True       # `done` knows and the connection is never reused
                    _shut(entry[2])
                    entry[2] = None


def _shut(sock) -> None:
    """Shut the OS socket under `sock` (TLS in TLS through a proxy nests them): the blocked read
    ends at once. Never raises."""
    raw = sock
    while not isinstance(raw, socket.socket) and getattr(raw, "socket", None) is not None:
        raw = raw.socket
    try:
        socket.socket.shutdown(raw, socket.SHUT_RDWR)  # the plain call, even on an SSLSocket
    except Exception:  # noqa: BLE001 - closed already, or not a socket at all: nothing to cut
        pass


WATCHDOG = _Watchdog()


class _Watched:
    """The status line and headers of an answer, and a proxy's answer to CONNECT, within the
    connection's timeout (the read timeout, the connect timeout for CONNECT)."""

    def _watched(self, call):
        seconds = self.timeout if isinstance(self.timeout, int | float) else None
        sock = getattr(self, "sock", None)
        if not seconds or sock is None:
            return call()
        entry = WATCHDOG.watch(sock, seconds)
        try:
            result = call()
        except BaseException:
            if WATCHDOG.done(entry):
                raise TimeoutError(f"no complete answer within {seconds:g} s") from None
            raise
        if WATCHDOG.done(entry):  # what came before the cut is not a whole header block
            raise TimeoutError(f"no complete answer within {seconds:g} s")
        return result

    def getresponse(self):
        return self._watched(super().getresponse)

    def _tunnel(self):
        return self._watched(super()._tunnel)


class _Connection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _TLSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _Pool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


_POOLS = {"http": _Pool, "https": _TLSPool}


class _UnixConnection(_Watched, urllib3.connection.HTTPConnection):
    """HTTP over the Unix socket `socket_path` (set by unix_connection_class)."""

    socket_path = ""

    def _new_conn(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout if isinstance(self.timeout, int | float) else None)
        try:
            s.connect(self.socket_path)
        except OSError:
            s.close()
            raise
        return s


def unix_connection_class(path: str) -> type:
    """A urllib3 connection class speaking HTTP over the Unix socket at `path`, its response
    headers bounded by the read timeout as in `session`."""
    return type("UnixConnection", (_UnixConnection,), {"socket_path": path})


class _Adapter(requests.adapters.HTTPAdapter):
    """Watched connections, directly and through a proxy; `ssl_context` (extra CAs) if given."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy, **kwargs):
        if self.ssl_context is not None:  # for the registry behind the proxy, and the proxy
            kwargs.setdefault("ssl_context", self.ssl_context)
            kwargs.setdefault("proxy_ssl_context", self.ssl_context)
        manager = super().proxy_manager_for(proxy, **kwargs)
        if isinstance(manager, urllib3.poolmanager.PoolManager):
            manager.pool_classes_by_scheme = _POOLS
        return manager


def session(ssl_context: ssl.SSLContext | None = None) -> requests.Session:
    """A requests session whose answers must bring their headers within the read timeout."""
    s = requests.Session()
    adapter = _Adapter(ssl_context)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s
