"""The chunk cache under kill -9: whatever was marked ready is exactly right."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import rafs
from daemon.chunkcache import ChunkCache
from daemon.storage import BlobStore, StorageOptions
from rafs.localblob import LocalBlobs, walk
from tests.treeutil import make_source

IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"

FILLER = """
import sys
import rafs
from daemon.storage import BlobStore, StorageOptions
from rafs.localblob import walk
image = rafs.open_image(sys.argv[1])
opts = StorageOptions("localfs", {"dir": sys.argv[2]}, work_dir=sys.argv[3], prefetch_enable=True,
                      prefetch_threads=2, prefetch_merging_size=1 << 16)
store = BlobStore(image, opts)
store.load_blob_meta()
store.start_prefetch()
for _ in range(100):
    for path, inode in walk(image):
        if inode.is_reg:
            store.read(image.chunks(inode.ino, 0, inode.size))
"""


def _build(tmp_path: Path, chunk_size: str) -> Path:
    """Our builder's image of the sample tree under tmp_path/img (bootstrap, blobs/)."""
    out = tmp_path / "img"
    subprocess.run([str(IMAGE_TOOL), "create", "--chunk-size", chunk_size, "--blob-dir",
                    str(out / "blobs"), "--bootstrap", str(out / "bootstrap"),
                    str(make_source(tmp_path))], check=True, capture_output=True)
    return out


def test_kill_9_never_leaves_a_wrong_ready_chunk(tmp_path):
    out = _build(tmp_path, "0x1000")
    image = rafs.open_image(out / "bootstrap")
    truth_blobs = LocalBlobs(image, str(out / "blobs"))
    blob = image.blobs[0]
    table = image._ci[0]
    work = tmp_path / "cache"
    rnd = random.Random(11)
    ready_seen = set()
    for _round in range(12):
        p = subprocess.Popen([sys.executable, "-c", FILLER, str(out / "bootstrap"),
                              str(out / "blobs"), str(work)], cwd=Path(__file__).parents[2])
        time.sleep(rnd.uniform(0.05, 0.6))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        cache = ChunkCache(str(work), image.blobs)
        f = cache.files[0]
        for i in range(blob.chunk_count):
            c_off, c_size, d_off, d_size, flags = table.entry(i)
            chunk = rafs.ChunkInfo(0, i, flags, c_off, c_size, d_off, d_size, b"")
            data = f.get(chunk)
            if data is not None:
                ready_seen.add(i)
                assert data == truth_blobs.chunk_data(chunk, verify=False), f"chunk {i} wrong"
        cache.close()
    assert ready_seen, "the filler never got any chunk into the cache"
    # and a restart on the crashed cache serves every file exactly
    store = BlobStore(rafs.open_image(out / "bootstrap"),
                      StorageOptions("localfs", {"dir": str(out / "blobs")}, work_dir=str(work)))
    for _path, inode in walk(store.image):
        if inode.is_reg:
            assert store.read(store.image.chunks(inode.ino, 0, inode.size)) == \
                truth_blobs.read_file(inode.ino)
    store.close()


def test_a_chunk_is_marked_ready_on_disk_only_after_its_data_is_durable(tmp_path, monkeypatch):
    """Power loss: the ready byte of a chunk reaches the file only after an fdatasync of the data
    file that followed the chunk's data write; close commits every written chunk."""
    from daemon import chunkcache

    out = _build(tmp_path, "0x1000")
    store = BlobStore(rafs.open_image(out / "bootstrap"),
                      StorageOptions("localfs", {"dir": str(out / "blobs")},
                                     work_dir=str(tmp_path / "cache"), memory_cache_bytes=1))
    image, f = store.image, store.cache.files[0]
    events: list[tuple] = []
    pwrite, fdatasync = os.pwrite, os.fdatasync

    def spy_pwrite(fd, data, offset):
        if fd == f.data_fd:
            events.append(("data", offset))
        elif fd == f.ready_fd and offset >= chunkcache.HEADER_SIZE:
            events.append(("ready", offset - chunkcache.HEADER_SIZE, bytes(data)))
        return pwrite(fd, data, offset)

    def spy_fdatasync(fd):
        if fd == f.data_fd:
            events.append(("sync",))
        return fdatasync(fd)

    monkeypatch.setattr(chunkcache.os, "pwrite", spy_pwrite)
    monkeypatch.setattr(chunkcache.os, "fdatasync", spy_fdatasync)
    index = {c.uncompressed_offset: c.chunk_index
             for _p, i in walk(image) if i.is_reg for c in image.file_chunks(i.ino)}
    for _p, i in walk(image):
        if i.is_reg:
            store.read(image.chunks(i.ino, 0, i.size))
    store.close()
    written, marked, last_sync = {}, set(), -1
    for n, e in enumerate(events):
        if e[0] == "data":
            written[index[e[1]]] = n
        elif e[0] == "sync":
            last_sync = n
        elif set(e[2]) == {1}:
            for i in range(e[1], e[1] + len(e[2])):
                assert written[i] < last_sync, f"chunk {i} marked ready before its data was synced"
                marked.add(i)
    syncs = sum(e[0] == "sync" for e in events)
    assert len(written) > 100 and marked == set(written)
    assert syncs < len(written) // 10  # in groups, not one fdatasync per chunk
    cache = ChunkCache(str(tmp_path / "cache"), image.blobs)
    assert cache.files[0].ready_count() == len(marked)
    cache.close()


def test_a_commit_whose_chunks_were_all_forgotten_leaves_the_cache_intact(tmp_path, monkeypatch):
    """A chunk found bad (validate) while its commit syncs is not marked; the commit must then
    write nothing at all (it once wrote a ready byte into the header, and the next start threw
    the whole cache away)."""
    from daemon import chunkcache

    out = _build(tmp_path, "0x10000")
    image = rafs.open_image(out / "bootstrap")
    truth = LocalBlobs(image, str(out / "blobs"))
    chunks = sorted({c for _p, i in walk(image) if i.is_reg for c in image.file_chunks(i.ino)},
                    key=lambda c: c.chunk_index)
    cache = ChunkCache(str(tmp_path / "cache"), image.blobs)
    for c in chunks[:3]:
        assert cache.put(c, truth.chunk_data(c))
    cache.commit()
    bad = chunks[3]
    assert cache.put(bad, truth.chunk_data(bad))
    sync = os.fdatasync

    def sync_then_forget(fd):  # the reader that finds it bad runs during the sync
        sync(fd)
        cache.forget(bad)

    monkeypatch.setattr(chunkcache.os, "fdatasync", sync_then_forget)
    cache.commit()
    monkeypatch.undo()
    cache.close()
    again = ChunkCache(str(tmp_path / "cache"), image.blobs)
    assert [again.is_ready(c) for c in chunks[:4]] == [True, True, True, False]
    assert all(again.get(c) == truth.chunk_data(c) for c in chunks[:3])
    again.close()


def test_after_a_failed_sync_no_later_commit_marks_anything(tmp_path, monkeypatch):
    """The kernel reports a writeback error once: a sync that follows a failed one may succeed
    with the data lost. Commits run one at a time, and after a failed sync nothing of that blob
    is marked ready (nor served from the cache)."""
    import errno
    import threading

    from daemon import chunkcache

    out = _build(tmp_path, "0x10000")
    image = rafs.open_image(out / "bootstrap")
    truth = LocalBlobs(image, str(out / "blobs"))
    chunks = sorted({c for _p, i in walk(image) if i.is_reg for c in image.file_chunks(i.ino)},
                    key=lambda c: c.chunk_index)
    cache = ChunkCache(str(tmp_path / "cache"), image.blobs, durable=False)
    syncing, go, calls = threading.Event(), threading.Event(), []
    sync = os.fdatasync

    def flaky_sync(fd):  # the first sync fails, after a pause; later ones "succeed"
        calls.append(fd)
        if len(calls) == 1:
            syncing.set()
            go.wait(10)
            raise OSError(errno.EIO, "writeback failed")
        return sync(fd)

    monkeypatch.setattr(chunkcache.os, "fdatasync", flaky_sync)
    half = len(chunks) // 2
    for c in chunks[:half]:
        cache.put(c, truth.chunk_data(c))
    first = threading.Thread(target=cache.commit)
    first.start()
    assert syncing.wait(10)
    for c in chunks[half:]:  # written while the first sync hangs, committed by another thread
        cache.put(c, truth.chunk_data(c))
    second = threading.Thread(target=cache.commit)
    second.start()
    second.join(0.3)
    go.set()
    first.join(10)
    second.join(10)
    monkeypatch.undo()
    assert not any(cache.is_ready(c) for c in chunks) and cache.get(chunks[-1]) is None
    cache.close()
    again = ChunkCache(str(tmp_path / "cache"), image.blobs)
    assert again.files[0].ready_count() == 0  # on disk too
    again.close()
