"""Registry backend HTTP behaviour against scripted servers on 127.0.0.1: redirects, retries,
proxy fallback, lying bodies."""

from __future__ import annotations

import base64
import re

import pytest

from daemon.backends import make_backend
from daemon.storage_errors import BackendError
from tests.servers import ScriptedServer

BLOB = bytes(range(256)) * 64
BLOB_ID = "ab" * 32
AUTH = base64.b64encode(b"user:pw").decode()


def ranged(h):
    m = re.match(r"bytes=(\d+)-(\d+)", h.headers.get("Range", ""))
    a, b = int(m.group(1)), int(m.group(2))
    return 206, {"Content-Range": f"bytes {a}-{b}/{len(BLOB)}"}, BLOB[a:b + 1]


def registry_for(server, **extra):
    return make_backend("registry", {"scheme": "http", "host": f"127.0.0.1:{server.port}",
                                     "repo": "lib/img", **extra})


def test_redirect_is_followed_without_leaking_credentials():
    target = ScriptedServer(ranged)

    def origin(h):
        if h.headers.get("Authorization") != f"Basic {AUTH}":
            return 401, {"WWW-Authenticate": 'Basic realm="x"'}, b""
        return 307, {"Location": f"{target.url}/storage/blob?sig=1"}, b""

    reg = ScriptedServer(origin)
    try:
        data = registry_for(reg, auth=AUTH).read(BLOB_ID, 100, 1000)
        assert data == BLOB[100:1100]
        assert target.seen and all("Authorization" not in h for _m, _p, h in target.seen)
        assert target.seen[0][2]["Range"] == "bytes=100-1099"
    finally:
        reg.stop()
        target.stop()


def test_temporary_failures_are_retried_then_succeed():
    calls = []

    def flaky(h):
        calls.append(1)
        if len(calls) <= 2:
            return 503, {}, b"busy"
        return ranged(h)

    s = ScriptedServer(flaky)
    try:
        assert registry_for(s).read(BLOB_ID, 0, 10) == BLOB[:10]
        assert len(calls) == 3
    finally:
        s.stop()


@pytest.mark.parametrize("lie", ["short", "long", "html200", "status500"])
def test_lying_servers_never_yield_wrong_bytes(lie):
    def liar(h):
        status, headers, body = ranged(h)
        if lie == "short":
            return 206, headers, body[:-1]
        if lie == "long":
            return 206, headers, body + b"x"
        if lie == "html200":
            return 200, {"Content-Type": "text/html"}, b"<html>error</html>"
        return 500, {}, b"oops"

    s = ScriptedServer(liar)
    try:
        with pytest.raises(BackendError):
            registry_for(s, retry_limit=1).read(BLOB_ID, 0, 100)
    finally:
        s.stop()


def test_proxy_failure_falls_back_to_the_registry():
    proxy = ScriptedServer(lambda h: (502, {}, b"bad gateway"))
    reg = ScriptedServer(ranged)
    try:
        backend = registry_for(reg, proxy={"url": proxy.url})
        assert backend.read(BLOB_ID, 5, 20) == BLOB[5:25]
        assert proxy.seen and reg.seen  # tried the proxy first, then went direct
        no_fallback = registry_for(reg, proxy={"url": proxy.url, "fallback": False}, retry_limit=0)
        with pytest.raises(BackendError):
            no_fallback.read(BLOB_ID, 5, 20)
    finally:
        proxy.stop()
        reg.stop()


def test_redirect_targets_get_the_configured_host_and_scheme():
    storage = ScriptedServer(ranged)
    reg = ScriptedServer(lambda h: (307, {"Location": "https://storage.invalid:1/blob?sig=x"}, b""))
    try:
        backend = registry_for(reg, blob_redirected_host=f"127.0.0.1:{storage.port}",
                               blob_url_scheme="http")
        assert backend.read(BLOB_ID, 100, 50) == BLOB[100:150]
        assert [s[1] for s in storage.seen] == ["/blob?sig=x"]
    finally:
        storage.stop()
        reg.stop()


def test_a_failed_proxy_is_skipped_until_check_interval_passes():
    import time

    proxy = ScriptedServer(lambda h: (502, {}, b"bad gateway"))
    reg = ScriptedServer(ranged)
    try:
        backend = registry_for(reg, proxy={"url": proxy.url, "check_interval": 1})
        assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]
        assert len(proxy.seen) == 1
        for i in range(5):  # direct, without asking the proxy first
            assert backend.read(BLOB_ID, i, 10) == BLOB[i:i + 10]
        assert len(proxy.seen) == 1
        time.sleep(1.1)
        assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]
        assert len(proxy.seen) == 2  # tried again after the interval
    finally:
        proxy.stop()
        reg.stop()


def test_a_proxy_with_a_ping_url_is_used_again_once_the_ping_answers():
    import time

    state = {"up": False}
    proxy = ScriptedServer(lambda h: (200, {}, b"pong") if h.path == "/ping" else (
        ranged(h) if state["up"] else (503, {}, b"")))
    reg = ScriptedServer(ranged)
    try:
        backend = registry_for(reg, proxy={"url": proxy.url, "ping_url": proxy.url + "/ping",
                                           "check_interval": 0.2})
        assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]  # proxy 503: direct
        state["up"] = True  # (the ping answers all along; the proxy works from now on)
        deadline = time.monotonic() + 5
        while backend.proxy_down_until != 0.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        proxied = len([s for s in proxy.seen if s[1] != "/ping"])
        assert backend.read(BLOB_ID, 20, 10) == BLOB[20:30]
        assert len([s for s in proxy.seen if s[1] != "/ping"]) == proxied + 1
        assert any(s[1] == "/ping" for s in proxy.seen)
    finally:
        proxy.stop()
        reg.stop()


def test_use_http_sends_https_requests_to_the_proxy_as_plain_http():
    proxy = ScriptedServer(ranged)
    try:
        backend = make_backend("registry", {"scheme": "https", "host": "registry.invalid",
                                            "repo": "lib/img", "retry_limit": 0,
                                            "proxy": {"url": proxy.url, "use_http": True,
                                                      "fallback": False}})
        assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]
        assert proxy.seen[0][1].startswith("http://registry.invalid/v2/lib/img/blobs/sha256:")
    finally:
        proxy.stop()


def test_a_refused_token_is_answered_from_a_clean_challenge():
    """Harbor answers an expired token with a Basic challenge; the Bearer one comes to a request
    without credentials. As nydusd, the request is asked again without them, and the read
    works (before: 'registry wants basic auth', EIO)."""
    tokens = ScriptedServer(lambda h: (200, {"Content-Type": "application/json"},
                                       b'{"token": "new", "expires_in": 300}'))

    def harbor(h):
        auth = h.headers.get("Authorization")
        if auth == "Bearer new":
            return ranged(h)
        if auth:
            return 401, {"WWW-Authenticate": 'Basic realm="harbor"'}, b""
        return 401, {"WWW-Authenticate": f'Bearer realm="{tokens.url}/service/token",'
                     'service="harbor-registry",scope="repository:lib/img:pull"'}, b""

    reg = ScriptedServer(harbor)
    try:
        backend = registry_for(reg, registry_token="expired")
        assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]
        assert [h.get("Authorization") for _m, _p, h in reg.seen] == [
            "Bearer expired", None, "Bearer new"]
        assert backend.read(BLOB_ID, 10, 10) == BLOB[10:20]
        assert len(reg.seen) == 4
    finally:
        reg.stop()
        tokens.stop()


def test_skip_verify_lets_an_https_url_fall_back_to_http_and_only_skip_verify():
    """nydusd (since nydus#1915): with skip_verify, a registry that does not speak TLS on its
    https URL is used over http; without it, no silent downgrade."""
    s = ScriptedServer(lambda h: (200, {}, b"{}") if h.path == "/v2/" else ranged(h))
    try:
        lax = make_backend("registry", {"host": f"127.0.0.1:{s.port}", "repo": "lib/img",
                                        "skip_verify": True})
        assert lax.read(BLOB_ID, 0, 10) == BLOB[:10]
        assert lax.base.startswith("http://")
        strict = make_backend("registry", {"host": f"127.0.0.1:{s.port}", "repo": "lib/img",
                                           "retry_limit": 0})
        with pytest.raises(BackendError):
            strict.read(BLOB_ID, 0, 10)
        assert strict.base.startswith("https://")
    finally:
        s.stop()


def test_nydus_header_variables_go_on_every_request(monkeypatch):
    monkeypatch.setenv("NYDUS_HEADER_X-Gateway-Key", "k1")
    monkeypatch.setenv("NYDUS_HEADER_Range", "bytes=0-0")  # set by the client: ignored
    monkeypatch.setenv("NYDUS_HEADER_X(1)", "x")  # not a header name: ignored
    monkeypatch.setenv("NYDUS_HEADER_X-Nbsp", "\xa0k")  # requests refuses to send it: ignored
    s = ScriptedServer(ranged)
    try:
        assert registry_for(s).read(BLOB_ID, 5, 10) == BLOB[5:15]
        headers = s.seen[0][2]
        assert headers["X-Gateway-Key"] == "k1" and headers["Range"] == "bytes=5-14"
        assert "X(1)" not in headers and "X-Nbsp" not in headers
    finally:
        s.stop()


def test_a_200_with_exactly_the_asked_bytes_is_the_range():
    """nydusd takes any 2xx body of the asked length (nydus-backend-proxy answers 200)."""
    s = ScriptedServer(lambda h: (200, {}, ranged(h)[2]))
    try:
        assert registry_for(s).read(BLOB_ID, 100, 50) == BLOB[100:150]
    finally:
        s.stop()


def _trickler(first: bytes, every: float = 0.2):  # (also used by test_mirrors)
    """A TCP server on 127.0.0.1 that answers every connection with `first`, then one byte of
    header every `every` seconds, for ever. Returns (port, stop)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def trickle(conn):
        try:
            conn.recv(65536)
            conn.sendall(first)
            while not stop.wait(every):
                conn.sendall(b"a")
        except OSError:
            pass
        finally:
            conn.close()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()

    def close():
        stop.set()
        listener.close()

    return listener.getsockname()[1], close


@pytest.mark.timeout(60)
def test_a_header_block_cut_off_at_the_timeout_is_not_taken_as_complete():
    """A redirect whose Location is still arriving when the timeout passes must not be followed
    (and cached) as the part that came."""
    import time

    port, close = _trickler(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:1/b")
    try:
        backend = make_backend("registry", {"scheme": "http", "host": f"127.0.0.1:{port}",
                                            "repo": "lib/img", "timeout": 1})
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="Timeout|timed out|no complete answer"):
            backend.read(BLOB_ID, 0, 10)
        assert time.monotonic() - t0 < 15 and backend.redirects == {}
    finally:
        close()


@pytest.mark.timeout(60)
def test_a_proxy_trickling_its_connect_answer_is_cut_off():
    import time

    port, close = _trickler(b"HTTP/1.1 200 Connection established\r\nX-Slow: ")
    try:
        backend = make_backend("registry", {
            "host": "registry.invalid", "repo": "lib/img", "timeout": 1, "connect_timeout": 1,
            "proxy": {"url": f"http://127.0.0.1:{port}", "fallback": False}})
        t0 = time.monotonic()
        with pytest.raises(BackendError):
            backend.read(BLOB_ID, 0, 10)
        assert time.monotonic() - t0 < 15
    finally:
        close()


def test_the_watchdog_survives_sockets_it_cannot_shut():
    """TLS inside TLS (an https proxy) nests a transport without shutdown(); the watchdog thread
    must live on and cut the sockets after it."""
    import socket
    import time

    from daemon.httpwatch import WATCHDOG

    class Nested:  # what urllib3's SSLTransport looks like: the real socket is inside
        def __init__(self, inner):
            self.socket = inner

    for odd in (object(), Nested(object())):
        WATCHDOG.done(WATCHDOG.watch(odd, 0.01))
        entry = WATCHDOG.watch(odd, 0.01)
        time.sleep(0.1)
        assert WATCHDOG.done(entry) is True
    a, b = socket.socketpair()
    try:
        entry = WATCHDOG.watch(Nested(a), 0.05)
        a.settimeout(5)
        assert a.recv(1) == b""  # cut: the blocked read ends with EOF
        assert WATCHDOG.done(entry) is True
    finally:
        a.close()
        b.close()


def test_no_downgrade_for_errors_that_only_mention_ssl():
    """The downgrade looks for a TLS error or a refused connection among the causes, not for
    'ssl' in a message (which holds the URL: a repository named openssl)."""
    backend = make_backend("registry", {"host": "registry.invalid", "repo": "library/openssl",
                                        "skip_verify": True, "retry_limit": 0})
    with pytest.raises(BackendError):
        backend.read(BLOB_ID, 0, 10)
    assert backend.base.startswith("https://registry.invalid/")


def test_no_downgrade_while_nothing_answers_http_either():
    from tests.servers import free_port

    port = free_port()  # nothing listens: refused over https, and over http too
    backend = make_backend("registry", {"host": f"127.0.0.1:{port}", "repo": "lib/img",
                                        "skip_verify": True, "retry_limit": 0})
    with pytest.raises(BackendError):
        backend.read(BLOB_ID, 0, 10)
    assert backend.base.startswith("https://")


def test_presigned_signatures_stay_out_of_errors():
    from tests.servers import free_port

    dead = free_port()
    reg = ScriptedServer(lambda h: (307, {"Location": f"http://127.0.0.1:{dead}/bucket/blob"
                                          "?X-Amz-Signature=SECRETSIG"}, b""))
    try:
        with pytest.raises(BackendError) as info:
            registry_for(reg, retry_limit=0).read(BLOB_ID, 0, 10)
        assert "SECRETSIG" not in str(info.value)
    finally:
        reg.stop()


def test_an_expired_token_on_a_public_repository_is_dropped():
    def public(h):
        if h.headers.get("Authorization"):
            return 401, {"WWW-Authenticate": 'Basic realm="x"'}, b""
        return ranged(h)

    reg = ScriptedServer(public)
    try:
        backend = registry_for(reg, registry_token="expired")
        assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]
        assert backend.read(BLOB_ID, 10, 10) == BLOB[10:20]
        assert [h.get("Authorization") for _m, _p, h in reg.seen] == ["Bearer expired", None, None]
    finally:
        reg.stop()
