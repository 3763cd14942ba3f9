"""Faults inside the fetch path: racing fetches of one chunk, bad cached or fetched chunks,
servers that trickle or answer nonsense, a cache disk that fails, an image with a bad file.
Each must cost at most the read that needs the broken part, never wrong data or a dead worker."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cachetools
import pytest

import rafs
from daemon.chunkcache import MAX_CHUNKS, ChunkCache
from daemon.registry import RegistryBackend
from daemon.storage import BlobStore, StorageOptions
from daemon.storage_errors import BackendError, StorageError
from rafs.localblob import LocalBlobs, walk
from tests.faultserver import FaultServer
from tests.servers import ScriptedServer
from tests.treeutil import make_source

IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A v6 image of the sample tree, 64 KiB chunks, one blob."""
    tmp = tmp_path_factory.mktemp("faults")
    subprocess.run([str(IMAGE_TOOL), "create", "--chunk-size", "0x10000", "--blob-dir",
                    str(tmp / "blobs"), "--bootstrap", str(tmp / "bootstrap"),
                    str(make_source(tmp))], check=True, capture_output=True)
    return tmp


def _files(image) -> list:
    return [(p, i) for p, i in walk(image) if i.is_reg and i.size]


def _local(built: Path, **options) -> BlobStore:
    image = rafs.open_image(built / "bootstrap")
    return BlobStore(image, StorageOptions("localfs", {"dir": str(built / "blobs")}, **options))


def test_a_chunk_fetched_again_after_it_landed_is_not_aborted(built):
    """Thread A lands chunk k1 and goes on fetching k2; B starts a new fetch of k1 (the memory
    cache let it go) and C waits for B. A finishing must not fail B's fetch under C."""
    store = _local(built, cache_type="", amplify_io=0)
    image, fetcher = store.image, store.fetcher
    fetcher.mem = cachetools.LRUCache(maxsize=1)  # holds nothing: every chunk is let go at once
    chunks = sorted({p.chunk for _p, i in _files(image) for p in image.chunks(i.ino, 0, i.size)
                     if p.chunk}, key=lambda c: c.compressed_offset)
    k1, k2 = chunks[0], chunks[-1]
    a_in_k2, a_go, b_in, b_go = (threading.Event() for _ in range(4))
    read = store.backend._read

    def gated_read(blob_id, off, size, direct):
        who = threading.current_thread().name
        if who == "A" and off == k2.compressed_offset:
            a_in_k2.set()
            a_go.wait(10)
        if who == "B":
            b_in.set()
            b_go.wait(10)
        return read(blob_id, off, size, direct)

    store.backend._read = gated_read
    got = {}

    def run(name, wanted):
        try:
            fetcher.get_chunks(wanted, 4096)
            got[name] = "ok"
        except StorageError as e:
            got[name] = str(e)

    threads = {n: threading.Thread(target=run, args=(n, w), name=n)
               for n, w in (("A", [k1, k2]), ("B", [k1]), ("C", [k1]))}
    threads["A"].start()
    assert a_in_k2.wait(10)
    threads["B"].start()
    assert b_in.wait(10)
    threads["C"].start()
    deadline = time.monotonic() + 10
    while not _waiting(threads["C"]) and time.monotonic() < deadline:  # C waits for B's fetch
        time.sleep(0.01)
    a_go.set()
    threads["A"].join(10)
    b_go.set()
    for t in threads.values():
        t.join(10)
    assert got == {"A": "ok", "B": "ok", "C": "ok"}
    store.close()


def _waiting(t: threading.Thread) -> bool:
    frame = sys._current_frames().get(t.ident)
    while frame is not None:
        if frame.f_code.co_name == "wait":
            return True
        frame = frame.f_back
    return False


def _corrupt_cached(store: BlobStore, chunk: rafs.ChunkInfo) -> None:
    path = store.cache.underlying_files()[0]
    with open(path, "r+b") as f:
        f.seek(chunk.uncompressed_offset)
        f.write(bytes(b ^ 0xFF for b in f.read(16)))


@pytest.mark.parametrize("option", [None, "cache_validate", "digest_validate"])
def test_a_corrupt_cached_chunk_is_caught_and_repaired(built, tmp_path, option):
    """Checked whatever the options say: the cache directory is shared with untrusted images."""
    store = _local(built, work_dir=str(tmp_path), memory_cache_bytes=1)
    _path, inode = max(_files(store.image), key=lambda t: t[1].size)
    truth = LocalBlobs(store.image, str(built / "blobs")).read_file(inode.ino)
    assert store.read(store.image.chunks(inode.ino, 0, inode.size)) == truth
    chunk = store.image.file_chunks(inode.ino)[0]
    store.close()
    store = _local(built, work_dir=str(tmp_path), memory_cache_bytes=1,
                   **({option: True} if option else {}))
    _corrupt_cached(store, chunk)
    for _ in range(3):
        assert store.read(store.image.chunks(inode.ino, 0, inode.size)) == truth
    # fetched once, then the good data replaced the bad on disk
    assert store.backend.stats["read_count"] == 1
    store.close()
    store = _local(built, work_dir=str(tmp_path), memory_cache_bytes=1)
    assert store.read(store.image.chunks(inode.ino, 0, inode.size)) == truth
    assert store.backend.stats["read_count"] == 0
    store.close()


def test_a_corrupt_neighbour_fails_only_the_file_it_belongs_to(built, tmp_path):
    """A reader going through the files in blob order gets each read widened to the next files;
    one corrupt chunk among them fails the read of its own file, not of the others."""
    image = rafs.open_image(built / "bootstrap")
    order = sorted(((image.file_chunks(i.ino)[0], p, i) for p, i in _files(image)),
                   key=lambda t: t[0].compressed_offset)
    victim = next(t for t in order[3:] if t[2].size <= 4096)[0]
    blobs = tmp_path / "blobs"
    shutil.copytree(built / "blobs", blobs)
    blob = next(blobs.iterdir())
    data = bytearray(blob.read_bytes())
    data[victim.compressed_offset] ^= 0xFF
    blob.write_bytes(bytes(data))
    truth = LocalBlobs(image, str(built / "blobs"))
    server = FaultServer(blobs)
    try:
        store = BlobStore(image, StorageOptions(
            "registry", {"scheme": "http", "host": f"127.0.0.1:{server.port}", "repo": "r",
                         "retry_limit": 1}, cache_type="", amplify_io=1 << 20))
        failed = []
        for c, _p, i in order:
            try:
                assert store.read(image.chunks(i.ino, 0, i.size), i.ino, 0) == truth.read_file(i.ino)
            except StorageError:
                failed.append(c)
        assert failed == [victim]
        assert store.fetcher.flights == {}
        store.close()
    finally:
        server.stop()


def test_a_trickled_body_fails_within_the_timeout():
    """`timeout` bounds the whole request, body included: a server that sends a byte now and
    then is given up on, not waited for byte by byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-59/60\r\n"
                         b"Content-Length: 60\r\n\r\n")
            for _ in range(60):
                if stop.wait(0.2):
                    break
                try:
                    conn.sendall(b"x")
                except OSError:
                    break

    threading.Thread(target=serve, daemon=True).start()
    try:
        backend = RegistryBackend({"scheme": "http", "host": f"127.0.0.1:{listener.getsockname()[1]}",
                                   "repo": "r", "timeout": 1})
        backend.retries = 0
        t = time.monotonic()
        with pytest.raises(BackendError, match="too slow"):
            backend.read("a" * 64, 0, 60)
        assert time.monotonic() - t < 6  # ~1 s; 12 s were it waited for every byte
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize("answer", [
    {"status": 302, "headers": {"Location": "http://[::1/x"}},  # requests cannot parse it
    {"token": b"[1, 2]"}, {"token": b'{"token": 5}'},
    {"token": b'{"token": "t", "expires_in": "soon"}'}])
def test_nonsense_from_a_server_is_a_backend_error(answer):
    """Whatever a registry or its token server answers, a read fails with BackendError (EIO
    and a retry later), never with an exception that would kill a prefetch worker."""
    def respond(h):
        if h.path.startswith("/token"):
            return 200, {"Content-Type": "application/json"}, answer["token"]
        if "token" in answer:
            return 401, {"WWW-Authenticate": f'Bearer realm="{server.url}/token",service="r"'}, b""
        return answer["status"], answer["headers"], b""

    server = ScriptedServer(respond)
    try:
        backend = RegistryBackend({"scheme": "http", "host": f"127.0.0.1:{server.port}",
                                   "repo": "r", "retry_limit": 0})
        backend.retries = 0
        with pytest.raises(BackendError):
            backend.read("b" * 64, 0, 10)
    finally:
        server.stop()


def _break_first_chunk_record(built: Path, out: Path) -> tuple[bytes, int]:
    """A copy of the image whose largest file's first chunk table record claims size 0."""
    image = rafs.open_image(built / "bootstrap")
    path, inode = max(_files(image), key=lambda t: t[1].size)
    boot = bytearray((built / "bootstrap").read_bytes())
    off, _size = image._chunk_table
    key = image.file_chunks(inode.ino)[0]
    for pos in range(off, off + _size, 80):  # the record of that chunk: d_size := 0
        if int.from_bytes(boot[pos + 72:pos + 76], "little") == key.chunk_index:
            boot[pos + 44:pos + 48] = bytes(4)
    (out / "bootstrap").write_bytes(bytes(boot))
    return path, inode.ino


def test_prefetch_skips_a_file_it_cannot_read_and_caches_the_rest(built, tmp_path, caplog):
    bad_path, bad_ino = _break_first_chunk_record(built, tmp_path)
    image = rafs.open_image(tmp_path / "bootstrap")
    with pytest.raises(rafs.RafsError):
        image.file_chunks(bad_ino)
    store = BlobStore(image, StorageOptions(
        "localfs", {"dir": str(built / "blobs")}, work_dir=str(tmp_path / "cache"),
        prefetch_enable=True, prefetch_all=True, prefetch_threads=1))
    with caplog.at_level(logging.WARNING):
        store.start_prefetch()
        deadline = time.monotonic() + 60
        while store.prefetcher.end == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    stats = store.prefetcher.stats()
    assert stats["prefetch_errors"] >= 1 and stats["prefetch_end_time_secs"] > 0
    assert any("skipping file" in r.getMessage() for r in caplog.records)
    good = {c for _p, i in _files(image) if i.ino != bad_ino for c in image.file_chunks(i.ino)}
    assert good and all(store.cache.is_ready(c) for c in good)
    store.close()


def test_prefetch_of_a_cached_image_reads_nothing_back(built, tmp_path):
    """Prefetch skips chunks ready on disk without reading them: on a warm cache it neither
    loads the disk nor pushes the reader's hot chunks out of memory."""
    store = _local(built, work_dir=str(tmp_path))
    for _p, i in _files(store.image):
        store.read(store.image.chunks(i.ino, 0, i.size))
    store.close()
    store = _local(built, work_dir=str(tmp_path), prefetch_enable=True, prefetch_all=True)
    store.start_prefetch()
    deadline = time.monotonic() + 60
    while store.prefetcher.end == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.prefetcher.stats()["prefetch_done"] > 0
    assert store.fetcher.stats["disk_hits"] == 0 and store.backend.stats["read_count"] == 0
    store.close()


def test_a_blob_claiming_too_many_chunks_is_cached_in_memory_only(built, tmp_path, caplog):
    blob = rafs.open_image(built / "bootstrap").blobs[0]._replace(chunk_count=MAX_CHUNKS + 1)
    with caplog.at_level(logging.WARNING):
        cache = ChunkCache(str(tmp_path), [blob])
    assert cache.files == {} and os.listdir(tmp_path / "pynydusd") == []
    assert "cached in memory only" in caplog.text
    cache.close()


def _tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def test_a_cache_disk_full_at_start_serves_uncached(built, tmp_path, caplog):
    work = tmp_path / "full"
    _tmpfs(work, "16k")
    try:
        fd = os.open(work / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill it up
            while os.write(fd, bytes(4096)):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        with caplog.at_level(logging.WARNING):
            store = _local(built, work_dir=str(work))
        assert store.cache.files == {} and "cached in memory only" in caplog.text
        truth = LocalBlobs(store.image, str(built / "blobs"))
        for _p, i in _files(store.image):
            assert store.read(store.image.chunks(i.ino, 0, i.size)) == truth.read_file(i.ino)
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(work)], check=False)


def test_a_failing_cache_disk_serves_uncached(built, tmp_path, caplog, monkeypatch):
    """A cache write that fails with EIO (a dying disk; EROFS after an ext4 error remount is the
    same path) marks nothing ready and costs the read nothing: one warning, data served."""
    import errno

    from daemon import chunkcache

    store = _local(built, work_dir=str(tmp_path), memory_cache_bytes=1)
    data_fd = store.cache.files[0].data_fd
    pwrite = os.pwrite

    def failing_pwrite(fd, data, offset):
        if fd == data_fd:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return pwrite(fd, data, offset)

    monkeypatch.setattr(chunkcache.os, "pwrite", failing_pwrite)
    truth = LocalBlobs(store.image, str(built / "blobs"))
    with caplog.at_level(logging.WARNING):
        for _p, i in _files(store.image):
            assert store.read(store.image.chunks(i.ino, 0, i.size)) == truth.read_file(i.ino)
    assert caplog.text.count("cache write failed") == 1
    assert store.cache.files[0].ready_count() == 0
    store.close()


def test_an_inline_read_never_waits_for_the_network(built):
    """The FUSE loop reads inline only what needs no network: a chunk of a remote backend that
    is not (or no longer) in memory raises WouldBlock, so that a thread fetches it instead."""
    from daemon.storage_errors import WouldBlock

    server = FaultServer(built / "blobs")
    try:
        image = rafs.open_image(built / "bootstrap")
        store = BlobStore(image, StorageOptions(
            "registry", {"scheme": "http", "host": f"127.0.0.1:{server.port}", "repo": "r"},
            cache_type=""))
        _p, inode = _files(image)[0]
        pieces = image.chunks(inode.ino, 0, inode.size)
        with pytest.raises(WouldBlock):
            store.read(pieces, inline=True)
        assert store.backend.stats["read_count"] == 0
        data = store.read(pieces)
        assert store.read(pieces, inline=True) == data  # now in memory
        store.close()
    finally:
        server.stop()
    local = _local(built, cache_type="")
    assert local.read(local.image.chunks(inode.ino, 0, inode.size), inline=True) == data
    local.close()


def test_a_huge_token_answer_is_refused():
    def respond(h):
        if h.path.startswith("/token"):
            return 200, {}, b'{"token": "' + b"x" * (2 << 20) + b'"}'
        return 401, {"WWW-Authenticate": f'Bearer realm="{server.url}/token"'}, b""

    server = ScriptedServer(respond)
    try:
        backend = RegistryBackend({"scheme": "http", "host": f"127.0.0.1:{server.port}",
                                   "repo": "r"})
        backend.retries = 0
        with pytest.raises(BackendError, match="larger than"):
            backend.read("c" * 64, 0, 10)
    finally:
        server.stop()


def test_a_plain_200_is_taken_only_when_it_is_exactly_the_range_asked_for():
    """A server that ignores Range answers 200 with the whole blob: right when the read asked
    for the whole blob from its start (RFC 7233 allows it), refused otherwise."""
    blob = bytes(range(10))
    server = ScriptedServer(lambda h: (200, {}, blob))
    try:
        backend = RegistryBackend({"scheme": "http", "host": f"127.0.0.1:{server.port}",
                                   "repo": "r"})
        backend.retries = 0
        assert backend.read("d" * 64, 0, 10) == blob
        for offset, size in ((0, 5), (2, 8)):
            with pytest.raises(BackendError, match="ignored the Range"):
                backend.read("d" * 64, offset, size)
    finally:
        server.stop()


def _widened_to_neighbour(built: Path):
    """A store (no disk cache, digests checked) whose fetcher widens a read of the blob's first
    chunk k0 to its neighbour k1: (store, k0, k1)."""
    store = _local(built, cache_type="", digest_validate=True, memory_cache_bytes=1)
    chunks = sorted({p.chunk for _p, i in _files(store.image)
                     for p in store.image.chunks(i.ino, 0, i.size) if p.chunk},
                    key=lambda c: c.compressed_offset)
    k0, k1 = chunks[0], chunks[1]
    store.fetcher._neighbours = lambda missing, limit, follow=None: [k1] if k0 in missing else []
    return store, k0, k1


def test_a_neighbour_wanted_by_another_read_is_fetched_again_when_bad(built):
    """Thread A's read is widened to chunk k1, which thread B wants and waits for. One bad copy
    of k1 is fetched again, as a wanted chunk would be: B gets its data, not EIO."""
    store, k0, k1 = _widened_to_neighbour(built)
    fetcher = store.fetcher
    read, corrupted, b_waits = store.backend._read, [], threading.Event()

    def bad_once(blob_id, off, size, direct):
        data = read(blob_id, off, size, direct)
        if threading.current_thread().name == "A":
            b_waits.wait(10)
            if not corrupted and off <= k1.compressed_offset < off + size:
                corrupted.append(k1)
                i = k1.compressed_offset - off
                data = data[:i] + bytes(x ^ 0xFF for x in data[i:i + 8]) + data[i + 8:]
        return data

    store.backend._read = bad_once
    got = {}

    def run(name, wanted):
        try:
            fetcher.get_chunks(wanted, 1 << 20, amplify=1 << 20)
            got[name] = "ok"
        except StorageError as e:
            got[name] = str(e)

    a = threading.Thread(target=run, args=("A", [k0]), name="A")
    a.start()
    deadline = time.monotonic() + 10
    while (k1.blob_index, k1.compressed_offset) not in fetcher.flights and \
            time.monotonic() < deadline:
        time.sleep(0.001)
    b = threading.Thread(target=run, args=("B", [k1]), name="B")
    b.start()
    while not _waiting(b) and time.monotonic() < deadline:
        time.sleep(0.01)
    b_waits.set()
    a.join(10)
    b.join(10)
    assert corrupted and got == {"A": "ok", "B": "ok"}
    store.close()


def test_a_failed_retry_for_a_bad_neighbour_keeps_the_good_data(built):
    """A read whose widened request brought a bad neighbour is retried for that neighbour; if
    the retry fails (the server is gone), the read still gets its own chunk from the first
    answer."""
    store, k0, k1 = _widened_to_neighbour(built)
    fetcher = store.fetcher
    read, calls = store.backend._read, []

    def corrupt_then_gone(blob_id, off, size, direct):
        calls.append(off)
        if len(calls) > 1:
            raise BackendError("connection reset")
        data = read(blob_id, off, size, direct)
        i = k1.compressed_offset - off
        return data[:i] + bytes(x ^ 0xFF for x in data[i:i + 8]) + data[i + 8:]

    store.backend._read = corrupt_then_gone
    got = fetcher.get_chunks([k0], 1 << 20, amplify=1 << 20)
    truth = LocalBlobs(store.image, str(built / "blobs"))
    assert got == {(k0.blob_index, k0.compressed_offset): truth.chunk_data(k0)}
    assert len(calls) == 2 and fetcher.flights == {}
    store.close()


def test_a_chunk_that_came_good_once_is_kept_when_a_retry_spoils_it(built):
    """Attempt 1 brings wanted k0 good and neighbour k1 bad; the retry for k1 brings k0 bad. The
    read keeps k0's good copy from attempt 1 and succeeds."""
    store, k0, k1 = _widened_to_neighbour(built)
    read, spoiled = store.backend._read, []

    def spoil(blob_id, off, size, direct):
        data = read(blob_id, off, size, direct)
        bad = k1 if not spoiled else k0
        spoiled.append(bad)
        i = bad.compressed_offset - off
        return data[:i] + bytes(x ^ 0xFF for x in data[i:i + 8]) + data[i + 8:]

    store.backend._read = spoil
    got = store.fetcher.get_chunks([k0], 1 << 20, amplify=1 << 20)
    truth = LocalBlobs(store.image, str(built / "blobs"))
    assert got[(k0.blob_index, k0.compressed_offset)] == truth.chunk_data(k0)
    assert got[(k1.blob_index, k1.compressed_offset)] == truth.chunk_data(k1)  # good the 2nd time
    assert spoiled == [k1, k0] and store.fetcher.flights == {}
    store.close()
