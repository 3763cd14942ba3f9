"""Registry mirrors against scripted servers on 127.0.0.1: order, headers, fallback to the
registry, health (left out after failure_limit failures, back once the health URL answers), and
config errors."""

from __future__ import annotations

import os
import time

import pytest

from daemon.backends import make_backend
from daemon.config import ConfigError, parse_config_text
from daemon.storage_errors import BackendError
from tests.servers import ScriptedServer, free_port
from tests.storage.test_registry_http import BLOB, BLOB_ID, ranged, registry_for

BLOB_PATH = f"/v2/lib/img/blobs/sha256:{BLOB_ID}"


def blob_gets(server) -> list:
    return [s for s in server.seen if s[1] == BLOB_PATH]


@pytest.fixture
def origin():
    s = ScriptedServer(ranged)
    yield s
    s.stop()


def test_a_mirror_serves_reads_with_its_headers_and_the_registry_sees_none(origin):
    mirror = ScriptedServer(ranged)
    try:
        backend = registry_for(origin, mirrors=[{"host": mirror.url,
                                                 "headers": {"X-Mirror-Key": "k1"}}])
        assert backend.read(BLOB_ID, 100, 1000) == BLOB[100:1100]
        assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]
        gets = blob_gets(mirror)
        assert len(gets) == 2 and gets[0][2]["Range"] == "bytes=100-1099"
        assert all(h.get("X-Mirror-Key") == "k1" for _m, _p, h in gets)
        assert origin.seen == []
    finally:
        mirror.stop()


def test_mirrors_are_tried_in_order_and_a_5xx_moves_on(origin):
    first = ScriptedServer(lambda h: (503, {}, b"busy"))
    second = ScriptedServer(ranged)
    try:
        backend = registry_for(origin, mirrors=[{"host": first.url}, {"host": second.url}])
        assert backend.read(BLOB_ID, 5, 50) == BLOB[5:55]
        assert len(blob_gets(first)) == 1 and len(blob_gets(second)) == 1
        assert origin.seen == []
    finally:
        first.stop()
        second.stop()


def test_a_mirror_without_the_blob_sends_the_read_to_the_registry_and_stays_in_use(origin):
    mirror = ScriptedServer(lambda h: (404, {}, b"blob unknown"))
    try:
        backend = registry_for(origin, mirrors=[{"host": mirror.url, "failure_limit": 1,
                                                 "headers": {"X-Mirror-Key": "secret"}}])
        for _ in range(3):
            assert backend.read(BLOB_ID, 0, 100) == BLOB[:100]
        assert len(blob_gets(mirror)) == 3  # a 404 is no failure: asked every time
        assert len(blob_gets(origin)) == 3
        assert all("X-Mirror-Key" not in h for _m, _p, h in origin.seen)
    finally:
        mirror.stop()


def test_a_whole_blob_for_a_ranged_get_is_not_taken_from_a_mirror(origin):
    """A pull-through mirror still fetching a blob streams all of it (200): the read goes to the
    registry rather than download the whole blob for a few bytes."""
    mirror = ScriptedServer(lambda h: (200, {}, BLOB))
    try:
        backend = registry_for(origin, mirrors=[{"host": mirror.url}])
        assert backend.read(BLOB_ID, 1000, 10) == BLOB[1000:1010]
        assert len(blob_gets(mirror)) == 1 and len(blob_gets(origin)) == 1
    finally:
        mirror.stop()


def test_a_mirror_sending_wrong_bytes_never_yields_them(origin):
    def liar(h):
        status, headers, body = ranged(h)
        return status, headers, body[:-1]  # short

    mirror = ScriptedServer(liar)
    try:
        backend = registry_for(origin, mirrors=[{"host": mirror.url}])
        assert backend.read(BLOB_ID, 0, 4096) == BLOB[:4096]
        assert len(blob_gets(origin)) == 1
    finally:
        mirror.stop()


def test_a_failing_mirror_is_left_out_until_its_health_url_answers(origin):
    state = {"up": False}

    def flaky(h):
        if h.path == "/v2":  # the default health URL: <host>/v2
            return (200, {}, b"{}") if state["up"] else (503, {}, b"down")
        return ranged(h) if state["up"] else (502, {}, b"bad gateway")

    mirror = ScriptedServer(flaky)
    backend = registry_for(origin, mirrors=[{"host": mirror.url, "failure_limit": 2,
                                             "health_check_interval": 0.2}])
    try:
        for _ in range(5):
            assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]
        assert len(blob_gets(mirror)) == 2  # left out after 2 failures in a row
        assert len(blob_gets(origin)) == 5
        time.sleep(0.5)
        assert any(s[1] == "/v2" for s in mirror.seen)  # asked while out
        assert len(blob_gets(mirror)) == 2
        state["up"] = True
        deadline = time.monotonic() + 5
        while not backend.mirrors[0].healthy and time.monotonic() < deadline:
            time.sleep(0.05)
        pings = len(mirror.seen) - len(blob_gets(mirror))
        assert backend.read(BLOB_ID, 20, 10) == BLOB[20:30]
        assert len(blob_gets(mirror)) == 3 and len(blob_gets(origin)) == 5
        time.sleep(0.5)
        assert len(mirror.seen) - len(blob_gets(mirror)) == pings  # no health checks while in use
    finally:
        backend.close()
        mirror.stop()


def test_a_dead_mirror_costs_one_connection_error_per_read_until_left_out(origin):
    port = free_port()  # nothing listens here
    backend = registry_for(origin, mirrors=[{"host": f"http://127.0.0.1:{port}",
                                             "failure_limit": 3, "health_check_interval": 60}])
    try:
        for _ in range(6):
            assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]
        assert not backend.mirrors[0].healthy and backend.mirrors[0].failures == 3
    finally:
        backend.close()


def test_a_mirror_redirect_to_another_host_carries_no_credentials(origin):
    target = ScriptedServer(ranged)
    mirror = ScriptedServer(lambda h: (307, {"Location": f"{target.url}/blob?sig=1"}, b""))
    try:
        backend = registry_for(origin, registry_token="tok", mirrors=[
            {"host": mirror.url, "headers": {"X-Mirror-Key": "secret"}}])
        assert backend.read(BLOB_ID, 7, 70) == BLOB[7:77]
        assert blob_gets(mirror)[0][2]["Authorization"] == "Bearer tok"
        assert target.seen and all("Authorization" not in h and "X-Mirror-Key" not in h
                                   for _m, _p, h in target.seen)
        assert origin.seen == []
    finally:
        mirror.stop()
        target.stop()


def test_reads_fail_only_when_mirrors_and_registry_all_fail():
    mirror = ScriptedServer(lambda h: (503, {}, b"busy"))
    origin = ScriptedServer(lambda h: (404, {}, b"blob unknown"))
    try:
        backend = registry_for(origin, retry_limit=0, mirrors=[{"host": mirror.url}])
        with pytest.raises(BackendError):
            backend.read(BLOB_ID, 0, 10)
    finally:
        mirror.stop()
        origin.stop()


def _config(mirrors) -> str:
    import json

    return json.dumps({"device": {"backend": {"type": "registry", "config": {
        "scheme": "http", "host": "127.0.0.1:5000", "repo": "lib/img", "mirrors": mirrors}}},
        "mode": "direct"})


@pytest.mark.parametrize("mirrors, names", [
    ({"host": "http://m"}, "'mirrors' must be a list"),
    (["http://m"], "'mirrors[0]' must be an object"),
    ([{"host": "m.example:5000"}], "'mirrors[0].host' must be an http:// or https:// URL"),
    ([{"host": "http://m"}, {"host": "http://m:99999"}], "'mirrors[1].host' is not a URL"),
    ([{"host": "http://m", "headers": {"X": "a\r\nInjected: 1"}}], "'mirrors[0].headers'"),
    ([{"host": "http://m", "failure_limit": "5"}], "'mirrors[0].failure_limit'"),
    ([{"host": "http://m", "health_check_interval": -1}], "'mirrors[0].health_check_interval'"),
    ([{"host": "http://m", "ping_url": "/ping"}], "'mirrors[0].ping_url'"),
    ([{"host": "http://m", "headers": {"X-Euro": "caf\u20ac"}}], "'mirrors[0].headers'"),
    ([{"host": "http://m", "headers": {"X(1)": "a"}}], "'mirrors[0].headers'"),
    ([{"host": "http://m", "headers": {"range": "bytes=0-0"}}], "'mirrors[0].headers'"),
    ([{"host": "http://m:0"}], "'mirrors[0].host'"),
])
def test_a_bad_mirror_config_is_refused_naming_the_entry(mirrors, names):
    with pytest.raises(ConfigError, match=names.replace("[", r"\[").replace("]", r"\]")):
        parse_config_text(_config(mirrors))


def test_old_mirror_keys_and_empty_hosts_are_accepted():
    cfg = parse_config_text(_config([
        {"host": "", "auth_through": True},
        {"host": "http://127.0.0.1:65001/ignored/path", "auth_through": False,
         "health_check_pause_elapsed": 300, "headers": {"X-Dragonfly-Registry": "https://r"}}]))
    from daemon.backends import make_backend

    backend = make_backend("registry", cfg.storage.backend_config)
    assert [m.host for m in backend.mirrors] == ["http://127.0.0.1:65001"]
    assert cfg.redacted()["backend"]["registry"]["mirrors"][1]["headers"] == {
        "X-Dragonfly-Registry": ""}


def _corrupt_mirror_store(tmp_path, failure_limit: int = 5):
    """A BlobStore of a built v6 image behind a registry and a mirror whose copy of the blob is
    corrupt (right length, wrong bytes: only the chunk digests tell); `reads(again)` reads every
    file (again: not from memory) and checks it against the source."""
    import subprocess
    import sys
    from pathlib import Path

    import rafs
    from daemon.storage import BlobStore, StorageOptions
    from rafs.localblob import walk
    from tests.treeutil import make_source

    tool = Path(sys.executable).parent / "pynydus-image"
    src = make_source(tmp_path)
    subprocess.run([str(tool), "create", "--blob-dir", str(tmp_path / "blobs"), "--bootstrap",
                    str(tmp_path / "bootstrap"), str(src)],
                   check=True, capture_output=True)
    image = rafs.open_image(tmp_path / "bootstrap")
    blob = (tmp_path / "blobs" / image.blobs[0].blob_id).read_bytes()

    def serve(data):
        def respond(h):
            if "Range" not in h.headers:  # the health check
                return 200, {}, b"{}"
            a, b = (int(x) for x in h.headers["Range"][len("bytes="):].split("-"))
            return 206, {"Content-Range": f"bytes {a}-{b}/{len(data)}"}, data[a:b + 1]
        return respond

    origin = ScriptedServer(serve(blob))
    mirror = ScriptedServer(serve(bytes(x ^ 0x5A for x in blob)))
    store = BlobStore(image, StorageOptions("registry", {
        "scheme": "http", "host": f"127.0.0.1:{origin.port}", "repo": "lib/img",
        "mirrors": [{"host": mirror.url, "failure_limit": failure_limit}]},
        cache_type="", amplify_io=0))
    files = [(p, i) for p, i in walk(image) if i.is_reg and i.size][:40]

    def reads(again: bool = False) -> None:
        if again:
            store.fetcher.mem.clear()
        for path, inode in files:
            got = store.read(image.chunks(inode.ino, 0, inode.size))
            assert got == (src / os.fsdecode(path.lstrip(b"/"))).read_bytes(), path

    return store, mirror, origin, reads


def test_bad_data_from_a_mirror_is_read_again_from_the_registry(tmp_path):
    """A corrupt mirror costs a second request per run, to the registry itself, and the mirror
    is charged a failure for each; the reader gets the right bytes."""
    store, mirror, origin, reads = _corrupt_mirror_store(tmp_path, failure_limit=255)
    try:
        reads()
        assert len(blob_gets_any(mirror)) == len(blob_gets_any(origin)) > 0
        assert store.backend.mirrors[0].bad == len(blob_gets_any(mirror))  # charged for each
    finally:
        store.close()
        mirror.stop()
        origin.stop()


def blob_gets_any(server) -> list:
    return [s for s in server.seen if "/blobs/sha256:" in s[1]]


def test_a_mirror_credential_of_its_own_replaces_the_registry_token(origin):
    mirror = ScriptedServer(ranged)
    try:
        backend = registry_for(origin, registry_token="REGISTRY-SECRET", mirrors=[
            {"host": mirror.url, "headers": {"authorization": "Basic bWlycm9yOnB3"}}])
        assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]
        sent = {k.lower(): v for k, v in blob_gets(mirror)[0][2].items()}
        assert sent["authorization"] == "Basic bWlycm9yOnB3" and sent["range"] == "bytes=0-9"
        assert "REGISTRY-SECRET" not in repr(mirror.seen)
    finally:
        mirror.stop()


def test_a_proxy_comes_first_then_the_mirrors_when_it_fails_with_fallback(origin):
    """nydusd's order: a healthy proxy serves alone; a failing one (fallback true) hands the
    read to the mirrors; with fallback false the mirrors are never asked."""
    state = {"proxy_up": True}
    proxy = ScriptedServer(lambda h: ranged(h) if state["proxy_up"] else (502, {}, b"down"))
    mirror = ScriptedServer(ranged)
    try:
        backend = registry_for(origin, proxy={"url": proxy.url, "check_interval": 60},
                               mirrors=[{"host": mirror.url}])
        assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]
        assert len(proxy.seen) == 1 and mirror.seen == [] and origin.seen == []
        state["proxy_up"] = False
        for _ in range(3):
            assert backend.read(BLOB_ID, 10, 10) == BLOB[10:20]
        assert len(proxy.seen) == 2  # failed once, then skipped for check_interval
        assert len(blob_gets(mirror)) == 3 and origin.seen == []
        strict = registry_for(origin, retry_limit=0, proxy={"url": proxy.url, "fallback": False},
                              mirrors=[{"host": mirror.url}])
        with pytest.raises(BackendError):
            strict.read(BLOB_ID, 0, 10)
        assert len(blob_gets(mirror)) == 3 and origin.seen == []
    finally:
        proxy.stop()
        mirror.stop()


def test_a_mirror_with_bad_bytes_is_left_out_at_its_failure_limit(tmp_path):
    from daemon.storage import BlobStore

    store, mirror, origin, reads = _corrupt_mirror_store(tmp_path, failure_limit=1)
    try:
        reads()
        assert not store.backend.mirrors[0].healthy
        asked = len(blob_gets_any(mirror))
        reads(again=True)
        assert len(blob_gets_any(mirror)) == asked  # left out: the registry serves
        assert isinstance(store, BlobStore)
    finally:
        store.close()
        mirror.stop()
        origin.stop()


@pytest.mark.timeout(60)
def test_a_mirror_trickling_its_headers_is_cut_off_at_the_timeout(origin):
    """requests' timeout bounds each socket read only: a server sending its headers a byte at a
    time would hold the read for ever. The read timeout now bounds the whole header."""
    from tests.storage.test_registry_http import _trickler

    port, close = _trickler(b"HTTP/1.1 206 Partial Content\r\nX-Slow: ")
    backend = registry_for(origin, timeout=1, mirrors=[
        {"host": f"http://127.0.0.1:{port}", "failure_limit": 1, "health_check_interval": 60}])
    try:
        t0 = time.monotonic()
        assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]
        assert time.monotonic() - t0 < 3 and not backend.mirrors[0].healthy
        slow = make_backend("registry", {"scheme": "http", "host": f"127.0.0.1:{port}",
                                         "repo": "lib/img", "timeout": 1, "retry_limit": 0})
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="no complete answer|Timeout|timed out"):
            slow.read(BLOB_ID, 0, 10)
        assert time.monotonic() - t0 < 10  # 4 attempts of 1 s and their backoff, not for ever
    finally:
        backend.close()
        close()


@pytest.mark.parametrize("thread, config", [
    ("mirror-ping", lambda: {"mirrors": [{"host": f"http://127.0.0.1:{free_port()}",
                                          "failure_limit": 1, "health_check_interval": 30}]}),
    ("proxy-ping", lambda: {"proxy": {"url": f"http://127.0.0.1:{free_port()}",
                                      "ping_url": "http://127.0.0.1:1/ping",
                                      "check_interval": 30}}),
])
def test_health_check_threads_end_with_the_backend(origin, thread, config):
    """A dead mirror or proxy is asked every 30 s in a thread; closing the backend ends it."""
    import threading

    before = {t for t in threading.enumerate() if t.name == thread}
    backend = registry_for(origin, **config())
    assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]
    ours = {t for t in threading.enumerate() if t.name == thread} - before
    assert ours
    backend.close()
    for t in ours:
        t.join(2)
    assert not any(t.is_alive() for t in ours)


def test_a_mirror_is_not_charged_for_bad_bytes_the_registry_sent(origin):
    """The mirror served a range once; later the registry serves it (the mirror lost the blob)
    and its bytes are bad: the retry must not charge the mirror."""
    state = {"has": True}
    mirror = ScriptedServer(lambda h: ranged(h) if state["has"] else (404, {}, b""))
    try:
        backend = registry_for(origin, mirrors=[{"host": mirror.url, "failure_limit": 1}])
        assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]  # from the mirror
        state["has"] = False
        assert backend.read(BLOB_ID, 0, 10) == BLOB[:10]  # from the registry
        backend.read(BLOB_ID, 0, 10, direct=True)  # (as after the registry's bytes were bad)
        assert backend.mirrors[0].bad == 0 and backend.mirrors[0].healthy
    finally:
        mirror.stop()
