"""Backends and the blob store against real servers on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

import rafs
from daemon.backends import LocalfsBackend, make_backend
from daemon.storage import BlobStore, StorageOptions
from daemon.storage_errors import BackendError
from rafs.localblob import walk
from tests.format.images import real_images
from tests.mountutil import BlobServerProc, wait_for
from tests.servers import Registry

IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"


@pytest.fixture
def v5(nydus_fixtures):
    boot, blob_dir = real_images(nydus_fixtures)["v5-sha256-none"]
    return boot, blob_dir, next(blob_dir.iterdir())


def _all_files(image, store) -> dict[bytes, str]:
    return {p: hashlib.sha256(store.read(image.chunks(i.ino, 0, i.size))).hexdigest()
            for p, i in walk(image) if i.is_reg}


def _local_digests(boot, blob_dir, tmp_path):
    image = rafs.open_image(boot)
    store = BlobStore(image, StorageOptions("localfs", {"dir": str(blob_dir)}, cache_type=""))
    return _all_files(image, store)


def http_store(image: rafs.Image, server: BlobServerProc, **options) -> BlobStore:
    """A BlobStore reading `image`'s blobs from a blob server on 127.0.0.1."""
    return BlobStore(image, StorageOptions(
        "registry", {"scheme": "http", "host": f"127.0.0.1:{server.port}", "repo": "r"}, **options))


def test_blob_server_protocol(v5):
    _boot, blob_dir, blob = v5
    data = blob.read_bytes()
    server = BlobServerProc(blob_dir)
    try:
        url = f"http://127.0.0.1:{server.port}/v2/sealer/blobs/sha256:{blob.name}"
        r = requests.get(url, headers={"Range": "bytes=10-19"})
        assert (r.status_code, r.content) == (200, data[10:20])
        assert r.headers["Content-Range"] == "bytes 10-19/10"  # nydus-backend-proxy's quirk
        assert requests.get(url, headers={"Range": "bytes=-5"}).content == data[-5:]
        assert requests.get(url, headers={"Range": f"bytes={len(data) - 3}-"}).content == data[-3:]
        assert requests.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
        assert requests.head(url).headers["Content-Length"] == str(len(data))
        assert requests.get(url).content == data
        bad = f"http://127.0.0.1:{server.port}/v2/sealer/blobs/"
        assert requests.get(bad + "sha256:" + "A" * 64).status_code == 400
        assert requests.get(bad + "sha256:../../etc/passwd").status_code in (400, 404)
        assert requests.get(bad + blob.name).status_code == 400  # no sha256: prefix
        assert requests.get(bad + "sha256:" + "0" * 64).status_code == 404
    finally:
        server.stop()


def test_registry_anonymous_read_and_warm_cache_makes_no_requests(v5, tmp_path):
    boot, blob_dir, blob = v5
    want = _local_digests(boot, blob_dir, tmp_path)
    reg = Registry(tmp_path / "reg")
    try:
        assert reg.push_blob("library/test", blob.read_bytes()) == blob.name
        opts = StorageOptions("registry", {"scheme": "http", "host": f"127.0.0.1:{reg.port}",
                                           "repo": "library/test"}, work_dir=str(tmp_path / "c"))
        image = rafs.open_image(boot)
        cold = BlobStore(image, opts)
        assert _all_files(image, cold) == want
        assert cold.backend.stats["read_count"] > 0
        cold.close()
        warm = BlobStore(rafs.open_image(boot), opts)
        assert _all_files(warm.image, warm) == want
        assert warm.backend.stats["read_count"] == 0  # every chunk came from the disk cache
        warm.close()
    finally:
        reg.stop()


def test_registry_basic_auth(v5, tmp_path):
    boot, blob_dir, blob = v5
    reg = Registry(tmp_path / "reg", "alice", "s3cret")
    try:
        reg.push_blob("private/img", blob.read_bytes())
        cfg = {"scheme": "http", "host": f"127.0.0.1:{reg.port}", "repo": "private/img"}
        no_auth = make_backend("registry", cfg)
        with pytest.raises(BackendError, match="basic auth"):
            no_auth.read(blob.name, 0, 100)
        good = make_backend("registry", cfg | {"auth": base64.b64encode(b"alice:s3cret").decode()})
        assert good.read(blob.name, 1000, 4096) == blob.read_bytes()[1000:5096]
        wrong = make_backend("registry", cfg | {"auth": base64.b64encode(b"alice:nope").decode()})
        with pytest.raises(BackendError):
            wrong.read(blob.name, 0, 100)
    finally:
        reg.stop()


def test_invalid_blob_ids_never_reach_a_path(tmp_path):
    backend = LocalfsBackend({"dir": str(tmp_path)})
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63, "0" * 64 + "/x"):
        with pytest.raises(BackendError, match="not 64 lowercase hex"):
            backend.read(bad, 0, 1)


def test_ranges_no_blob_can_have_are_a_backend_error(tmp_path):
    """A lying chunk table can name any offset: it is refused, never an OverflowError."""
    (tmp_path / ("a" * 64)).write_bytes(b"x" * 10)
    backend = LocalfsBackend({"dir": str(tmp_path)})
    for offset, size in ((1 << 63, 10), (-1, 1), (0, -1), ((1 << 62) - 4, 8)):
        with pytest.raises(BackendError, match="outside any blob"):
            backend.read("a" * 64, offset, size)
    assert backend.read("a" * 64, 2, 3) == b"xxx"


def test_single_flight_and_merging(v5, tmp_path):
    boot, blob_dir, blob = v5
    server = BlobServerProc(blob_dir)
    try:
        image = rafs.open_image(boot)
        opts = StorageOptions("registry", {"scheme": "http", "host": f"127.0.0.1:{server.port}",
                                           "repo": "sealer"}, cache_type="", amplify_io=8 << 20)
        store = BlobStore(image, opts)
        paths = dict(walk(image))
        big = paths[b"/normal-file-test/holefiles/head-hole-1"]
        pieces = image.chunks(big.ino, 0, big.size)
        results = []
        threads = [threading.Thread(target=lambda: results.append(store.read(pieces)))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(results)) == 1 and len(results[0]) == big.size
        # 8 readers of the same 3 chunks: each chunk fetched once, adjacent chunks in one request
        assert store.fetcher.stats["misses"] <= 3
        assert store.backend.stats["read_count"] <= 3
    finally:
        server.stop()


def test_registry_bearer_token_auth(v5, tmp_path):
    from tests.servers import TokenIssuer

    boot, blob_dir, blob = v5
    issuer = TokenIssuer(tmp_path / "tok", "alice", "s3cret")
    reg = Registry(tmp_path / "reg", token=issuer)
    try:
        der = subprocess.run(["openssl", "x509", "-in", str(issuer.cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        push = issuer.sign("repository:private/img:pull,push", der)
        reg.push_blob("private/img", blob.read_bytes(), bearer=push)
        cfg = {"scheme": "http", "host": f"127.0.0.1:{reg.port}", "repo": "private/img",
               "auth": base64.b64encode(b"alice:s3cret").decode()}
        backend = make_backend("registry", cfg)
        assert backend.read(blob.name, 10, 5000) == blob.read_bytes()[10:5010]
        assert backend.read(blob.name, 0, 10) == blob.read_bytes()[:10]  # the token is reused
        token_requests = [r for r in issuer.requests if r[1].get("scope")]
        assert len(token_requests) == 1
        method, params = token_requests[0]
        assert method == "POST" and params["service"] == "test-registry"
        assert params["scope"] == "repository:private/img:pull"
        bad = make_backend("registry", cfg | {"auth": base64.b64encode(b"alice:nope").decode()})
        with pytest.raises(BackendError):
            bad.read(blob.name, 0, 10)
    finally:
        reg.stop()
        issuer.stop()


def test_prefetch_fetches_the_prefetch_table_first_then_everything(tmp_path):
    import re
    import time

    from tests.servers import ScriptedServer
    from tests.treeutil import make_source

    src = make_source(tmp_path)
    out = tmp_path / "img"
    tool = str(IMAGE_TOOL)
    subprocess.run([tool, "create", "--chunk-size", "0x10000", "--prefetch-policy", "fs",
                    "--blob-dir", str(out / "blobs"), "--bootstrap", str(out / "bootstrap"),
                    str(src)], input=b"/data/random-300k.bin\n", check=True, capture_output=True)
    data = next((out / "blobs").iterdir()).read_bytes()

    def ranged(h):
        a, b = map(int, re.match(r"bytes=(\d+)-(\d+)", h.headers["Range"]).groups())
        return 206, {"Content-Range": f"bytes {a}-{b}/{len(data)}"}, data[a:b + 1]

    server = ScriptedServer(ranged)
    try:
        image = rafs.open_image(out / "bootstrap")
        store = BlobStore(image, StorageOptions(
            "registry", {"scheme": "http", "host": f"127.0.0.1:{server.port}", "repo": "r"},
            work_dir=str(tmp_path / "cache"), prefetch_enable=True, prefetch_threads=1,
            prefetch_merging_size=1 << 16))
        store.load_blob_meta()
        meta_requests = len(server.seen)
        store.start_prefetch()
        deadline = time.monotonic() + 30
        while not store.metrics()["data_all_ready"] and time.monotonic() < deadline:
            time.sleep(0.05)
        m = store.metrics()
        assert m["data_all_ready"] and m["prefetch_done"] == m["prefetch_total"] > 0
        target = image.lookup(image.lookup(image.root_ino, b"data").ino, b"random-300k.bin")
        first = image.file_chunks(target.ino)[0]
        a = int(re.match(r"bytes=(\d+)-", server.seen[meta_requests][2]["Range"]).group(1))
        assert a == first.compressed_offset  # the listed file came first
        store.close()
        # everything is cached now: reading every file makes no request
        n = len(server.seen)
        warm = BlobStore(rafs.open_image(out / "bootstrap"), StorageOptions(
            "registry", {"scheme": "http", "host": f"127.0.0.1:{server.port}", "repo": "r"},
            work_dir=str(tmp_path / "cache")))
        for _p, i in walk(warm.image):
            if i.is_reg:
                warm.read(warm.image.chunks(i.ino, 0, i.size))
        assert len(server.seen) == n
    finally:
        server.stop()


def test_foreground_reads_do_not_wait_for_a_throttled_prefetch(tmp_path):
    import time

    from tests.treeutil import make_source

    src = make_source(tmp_path)
    out = tmp_path / "img"
    tool = str(IMAGE_TOOL)
    subprocess.run([tool, "create", "--chunk-size", "0x10000", "--blob-dir", str(out / "blobs"),
                    "--bootstrap", str(out / "bootstrap"), str(src)], check=True,
                   capture_output=True)
    image = rafs.open_image(out / "bootstrap")
    rate = 64 << 10
    store = BlobStore(image, StorageOptions(
        "localfs", {"dir": str(out / "blobs")}, work_dir=str(tmp_path / "cache"),
        prefetch_enable=True, prefetch_threads=2, prefetch_merging_size=1 << 16,
        prefetch_bandwidth_rate=rate))
    store.load_blob_meta()
    start = time.monotonic()
    store.start_prefetch()
    try:
        paths = dict(walk(image))
        for name in (b"/data/text-1m.txt", b"/data/random-300k.bin", b"/many/file-0299"):
            i = paths[name]
            assert len(store.read(image.chunks(i.ino, 0, i.size))) == i.size
        m = store.metrics()
        elapsed = time.monotonic() - start
        # the foreground got its 1.4 MiB while the throttled prefetch is still far from done,
        # and prefetch stayed within its budget (one bucket of burst)
        assert m["prefetch_done"] < m["prefetch_total"]
        assert m["prefetch_data_amount"] <= rate * elapsed + 2 * rate
    finally:
        store.close()


def test_localfs_blob_file_and_alt_dirs(v5, tmp_path):
    _boot, blob_dir, blob = v5
    single = LocalfsBackend({"blob_file": str(blob)})
    assert single.read("cd" * 32, 0, 64) == blob.read_bytes()[:64]  # one file serves every id
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / blob.name).write_bytes(b"")  # empty file in `dir`: use alt_dirs
    alt = LocalfsBackend({"dir": str(tmp_path / "empty"), "alt_dirs": [str(blob_dir)]})
    assert alt.read(blob.name, 100, 10) == blob.read_bytes()[100:110]


@pytest.fixture(scope="module")
def sample_images(tmp_path_factory):
    from tests.treeutil import make_source

    tmp = tmp_path_factory.mktemp("sample")
    src = make_source(tmp)
    tool = str(IMAGE_TOOL)
    for v in ("5", "6"):
        subprocess.run([tool, "create", "--fs-version", v, "--chunk-size", "0x10000",
                        "--blob-dir", str(tmp / v / "blobs"), "--bootstrap",
                        str(tmp / v / "bootstrap"), str(src)], check=True, capture_output=True)
    return tmp


@pytest.mark.parametrize("version", ["5", "6"])
@pytest.mark.parametrize("amplify, extra_requests", [(0, 1), (1 << 20, 0)])
def test_amplify_io_widens_sequential_reads(sample_images, version, amplify, extra_requests):
    server = BlobServerProc(sample_images / version / "blobs")
    try:
        image = rafs.open_image(sample_images / version / "bootstrap")
        store = http_store(image, server, cache_type="", amplify_io=amplify)
        paths = dict(walk(image))
        # /many/file-0000, -0001 and -0002 are neighbours in the blob: once the reader went
        # from the first to the second, the third comes with it
        store.read(image.chunks(paths[b"/many/file-0000"].ino, 0, 2))
        store.read(image.chunks(paths[b"/many/file-0001"].ino, 0, 2))
        before = store.backend.stats["read_count"]
        assert store.read(image.chunks(paths[b"/many/file-0002"].ino, 0, 2)) == b"2\n"
        assert store.backend.stats["read_count"] - before == extra_requests
    finally:
        server.stop()


@pytest.mark.parametrize("version", ["5", "6"])
def test_scattered_small_reads_are_not_widened(sample_images, version):
    """Reads that jump around the blob fetch only their own chunks (a cold read of 1% of the
    files must not pull in the rest)."""
    server = BlobServerProc(sample_images / version / "blobs")
    try:
        image = rafs.open_image(sample_images / version / "bootstrap")
        store = http_store(image, server, cache_type="", amplify_io=1 << 20)
        paths = dict(walk(image))
        want = 0
        for n in (0, 5, 10, 15, 3):
            inode = paths[f"/many/file-{n:04d}".encode()]
            assert store.read(image.chunks(inode.ino, 0, inode.size)) == f"{n}\n".encode()
            want += image.file_chunks(inode.ino)[0].compressed_size
        assert store.backend.stats["read_amount_total"] == want
    finally:
        server.stop()


@pytest.mark.parametrize("version", ["5", "6"])
def test_widening_ramps_up_like_readahead(sample_images, version):
    """Two files that happen to be neighbours in the blob (a random sample hits such pairs) pull
    in only a few more chunks; a reader going on through the blob gets ever wider requests."""
    server = BlobServerProc(sample_images / version / "blobs")
    try:
        image = rafs.open_image(sample_images / version / "bootstrap")
        store = http_store(image, server, cache_type="", amplify_io=1 << 20)
        paths = dict(walk(image))
        names = sorted(p for p in paths if p.startswith(b"/many/file-"))
        chunks = {n: image.file_chunks(paths[n].ino)[0] for n in names}
        for n in names[:2]:
            store.read(image.chunks(paths[n].ino, 0, 16))
        fetched = store.fetcher.stats
        pair = chunks[names[0]].compressed_size + chunks[names[1]].compressed_size
        assert fetched["bytes_fetched"] <= pair + 4 * chunks[names[1]].compressed_size + 16
        for n in names[2:]:
            assert store.read(image.chunks(paths[n].ino, 0, 16)) == b"%d\n" % int(n[-4:])
        # doubling windows: a handful of requests for the whole directory, not one per file
        assert fetched["requests"] <= 12 < len(names) // 4
        # and nothing but chunk data was downloaded (v6 finds neighbours in its chunk table)
        assert store.backend.stats["read_amount_total"] == fetched["bytes_fetched"]
    finally:
        server.stop()


@pytest.mark.parametrize("version", ["5", "6"])
def test_reading_on_inside_a_file_widens_only_to_that_file(tmp_path, version):
    """A sequential miss inside a file fetches the file's next chunks with it, never the files
    after it in the blob: reading a few files whole costs what they hold (compressed)."""
    src = tmp_path / "src"
    src.mkdir()
    content = {name: os.urandom(n * 65536) for name, n in (("a", 4), ("b", 1), ("c", 1))}
    for name, data in content.items():
        (src / name).write_bytes(data)
    tool = str(IMAGE_TOOL)
    subprocess.run([tool, "create", "--fs-version", version, "--chunk-size", "0x10000",
                    "--blob-dir", str(tmp_path / "blobs"), "--bootstrap", str(tmp_path / "boot"),
                    str(src)], check=True, capture_output=True)
    server = BlobServerProc(tmp_path / "blobs")
    try:
        image = rafs.open_image(tmp_path / "boot")
        store = http_store(image, server, cache_type="", amplify_io=1 << 20)
        a = image.lookup(image.root_ino, b"a")
        got = b"".join(store.read(image.chunks(a.ino, off, 65536), a.ino, off)
                       for off in range(0, a.size, 65536))
        assert got == content["a"]
        stats = store.backend.stats
        # chunk 0 alone (nothing before it was read), then chunks 1-3 in one widened request
        assert stats["read_count"] == 2
        assert stats["read_amount_total"] == sum(c.compressed_size for c in image.file_chunks(a.ino))
    finally:
        server.stop()


def test_rejected_bearer_token_is_refreshed_on_401(v5, tmp_path):
    import time

    from daemon import registry
    from tests.servers import TokenIssuer

    _boot, _blob_dir, blob = v5
    first = TokenIssuer(tmp_path / "tok1", "alice", "s3cret")
    reg = Registry(tmp_path / "reg", token=first)
    second = None
    try:
        der = subprocess.run(["openssl", "x509", "-in", str(first.cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        reg.push_blob("private/img", blob.read_bytes(),
                      bearer=first.sign("repository:private/img:pull,push", der))
        backend = make_backend("registry", {
            "scheme": "http", "host": f"127.0.0.1:{reg.port}", "repo": "private/img",
            "auth": base64.b64encode(b"alice:s3cret").decode()})
        assert backend.read(blob.name, 0, 100) == blob.read_bytes()[:100]
        # the registry restarts trusting another issuer: the cached token now gets a 401
        reg.stop()
        second = TokenIssuer(tmp_path / "tok2", "alice", "s3cret")
        reg = Registry(tmp_path / "reg", token=second, port=reg.port)
        # eight readers meet the 401 together: one token request answers them all, whether the
        # token server fails (one attempt: a POST, then a GET) or works
        import threading

        def readers() -> dict[int, object]:
            got: dict[int, object] = {}
            start = threading.Barrier(8)

            def reader(i: int) -> None:
                start.wait()
                try:
                    got[i] = backend.read(blob.name, 100 * i, 100)
                except BackendError as e:
                    got[i] = e

            threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return got

        second.fail = True
        assert all(isinstance(v, BackendError) for v in readers().values())
        assert len([r for r in second.requests if r[1].get("scope")]) == 2
        second.fail = False
        time.sleep(registry.TOKEN_RETRY_S)  # a failed token request is not retried before
        assert readers() == {i: blob.read_bytes()[100 * i:100 * i + 100] for i in range(8)}
        assert len([r for r in second.requests if r[1].get("scope")]) == 3
    finally:
        reg.stop()
        first.stop()
        if second is not None:
            second.stop()


def test_bearer_token_is_renewed_before_it_expires_and_backs_off_while_renewal_fails(
        v5, tmp_path, monkeypatch, caplog):
    import time

    from daemon import registry
    from tests.servers import TokenIssuer

    monkeypatch.setattr(registry, "RENEW_AT", (0.3, 0.35))  # of a 6 s token: at 1.8-2.1 s
    _boot, _blob_dir, blob = v5
    data = blob.read_bytes()
    issuer = TokenIssuer(tmp_path / "tok", "alice", "s3cret", ttl=6)
    reg = Registry(tmp_path / "reg", token=issuer)
    try:
        der = subprocess.run(["openssl", "x509", "-in", str(issuer.cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        reg.push_blob("private/img", data,
                      bearer=issuer.sign("repository:private/img:pull,push", der))
        backend = make_backend("registry", {
            "scheme": "http", "host": f"127.0.0.1:{reg.port}", "repo": "private/img",
            "auth": base64.b64encode(b"alice:s3cret").decode()})

        def tokens() -> int:
            return len([r for r in issuer.requests if r[1].get("scope")])

        assert backend.read(blob.name, 0, 100) == data[:100]
        issued = time.monotonic()
        assert tokens() == 1
        time.sleep(2.2)  # past the renewal point, the token still good for 2.8 s at least
        assert backend.read(blob.name, 100, 100) == data[100:200]  # starts the renewal
        wait_for(lambda: tokens() == 2, timeout=3, what="the token renewed before it expired")
        renewed = time.monotonic()
        assert renewed - issued < 5
        time.sleep(2.2)
        issuer.fail = True  # the token server goes down: the current token serves on
        with caplog.at_level("WARNING", logger="daemon.registry"):
            assert backend.read(blob.name, 200, 100) == data[200:300]
            wait_for(lambda: backend.renew_failures == 1, timeout=3, what="a failed renewal")
            failed = tokens()
            assert failed > 2  # it tried
            for _ in range(5):  # and backs off: no attempt per request
                assert backend.read(blob.name, 300, 100) == data[300:400]
            assert tokens() == failed
        warnings = [r for r in caplog.records if "renewing the registry token failed" in r.message]
        assert len(warnings) == 1
        issuer.fail = False
        time.sleep(2.1)  # the first backoff is 1-2 s
        assert backend.read(blob.name, 400, 100) == data[400:500]
        wait_for(lambda: tokens() == failed + 1 and backend.renew_failures == 0, timeout=3,
                 what="the renewal after the token server came back")
    finally:
        reg.stop()
        issuer.stop()


def test_a_registry_with_a_private_ca_is_trusted_through_ca_cert_files(v5, tmp_path):
    from tests.servers import make_tls

    _boot, _blob_dir, blob = v5
    data = blob.read_bytes()
    ca, cert, key = make_tls(tmp_path / "tls")
    reg = Registry(tmp_path / "reg", tls=(ca, cert, key))
    try:
        reg.push_blob("private/img", data)
        cfg = {"scheme": "https", "host": f"127.0.0.1:{reg.port}", "repo": "private/img",
               "retry_limit": 0}
        with pytest.raises(BackendError, match="CERTIFICATE_VERIFY_FAILED|certificate verify"):
            make_backend("registry", cfg).read(blob.name, 0, 100)  # an unknown CA: refused
        trusted = make_backend("registry", cfg | {"ca_cert_files": [str(ca)]})
        assert trusted.read(blob.name, 10, 1000) == data[10:1010]
        assert make_backend("registry", cfg | {"skip_verify": True}).read(blob.name, 0, 10) \
            == data[:10]
        with pytest.raises(BackendError, match="ca_cert_files.*nope.pem"):
            make_backend("registry", cfg | {"ca_cert_files": [str(tmp_path / "nope.pem")]})
    finally:
        reg.stop()


class TlsConnectProxy:
    """An HTTPS forward proxy on 127.0.0.1 (TLS to the client, then CONNECT tunnels), with the
    certificate `cert`/`key`; it counts the tunnels it opened."""

    def __init__(self, cert, key) -> None:
        import socket
        import ssl
        import threading

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.tunnels = 0

        def pipe(a, b):
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def handle(raw):
            try:
                conn = ctx.wrap_socket(raw, server_side=True)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                host, port = head.split()[1].decode().rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)))
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self.tunnels += 1
                threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
                pipe(conn, upstream)
            except (OSError, ValueError, IndexError):
                raw.close()

        def serve():
            while True:
                try:
                    raw, _ = self.listener.accept()
                except OSError:
                    return
                threading.Thread(target=handle, args=(raw,), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def stop(self) -> None:
        self.listener.close()


def test_an_https_proxy_with_a_private_ca_carries_tls_to_the_registry(v5, tmp_path):
    """TLS inside TLS: the registry's TLS runs in a tunnel through an https proxy; ca_cert_files
    vouches for both (one private CA here)."""
    from tests.servers import make_tls

    _boot, _blob_dir, blob = v5
    data = blob.read_bytes()
    ca, cert, key = make_tls(tmp_path / "tls")
    reg = Registry(tmp_path / "reg", tls=(ca, cert, key))
    proxy = TlsConnectProxy(cert, key)
    try:
        reg.push_blob("private/img", data)
        cfg = {"scheme": "https", "host": f"127.0.0.1:{reg.port}", "repo": "private/img",
               "ca_cert_files": [str(ca)], "retry_limit": 0,
               "proxy": {"url": f"https://127.0.0.1:{proxy.port}", "fallback": False}}
        backend = make_backend("registry", cfg)
        assert backend.read(blob.name, 10, 1000) == data[10:1010]
        assert backend.read(blob.name, 0, 10) == data[:10]
        assert proxy.tunnels >= 1
    finally:
        proxy.stop()
        reg.stop()


def test_a_refused_request_names_its_url_blob_and_range(sample_v6, tmp_path):
    """A 404 is no reason to retry, and the error (in the log and the API's events) says which
    request failed: method and URL, blob and range. Without a disk cache no store path is shown."""
    img, _src = sample_v6
    image = rafs.open_image(img / "bootstrap")
    (tmp_path / "empty").mkdir()
    server = BlobServerProc(tmp_path / "empty")
    try:
        store = http_store(image, server, cache_type="")
        blob = image.blobs[0].blob_id
        f = next(i for _p, i in walk(image) if i.is_reg and i.size)
        with pytest.raises(BackendError) as e:
            store.read(image.chunks(f.ino, 0, f.size))
        msg = str(e.value)
        assert f"GET http://127.0.0.1:{server.port}/v2/r/blobs/sha256:{blob}: server answered " \
               "404" in msg
        assert msg.startswith(f"blob {blob} range ") and "attempts" not in msg
        assert store.metrics()["store_path"] == ""
        store.close()
    finally:
        server.stop()
    assert len(server.requests()) == 1  # not retried
