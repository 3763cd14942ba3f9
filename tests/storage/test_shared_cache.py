"""Images that share a cache directory. Blob ids come from the image, so a hostile image can name
another image's blob and lay its chunks out differently; whatever it writes to the shared cache, no
image must be served another chunk's bytes, and a cache reset under a running daemon must cost
refetches only."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import rafs
from daemon.storage import BlobStore, StorageOptions
from rafs.localblob import walk

IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"
CHUNK = 0x1000


def build_pair_image(tmp: Path) -> Path:
    """Under tmp: src/ (a.bin, b.bin: 4 distinct random chunks each) and its v5 image (4 KiB
    chunks, one blob): bootstrap, blobs/."""
    rnd = random.Random(5)
    src = tmp / "src"
    src.mkdir(parents=True)
    for name in ("a.bin", "b.bin"):
        (src / name).write_bytes(rnd.randbytes(4 * CHUNK))
    subprocess.run([str(IMAGE_TOOL), "create", "--fs-version", "5", "--compressor", "lz4_block",
                    "--chunk-size", hex(CHUNK), "--blob-dir", str(tmp / "blobs"), "--bootstrap",
                    str(tmp / "bootstrap"), str(src)], check=True, capture_output=True)
    return tmp


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    return build_pair_image(tmp_path_factory.mktemp("shared"))


def hostile_copy(image_dir: Path, out: Path) -> Path:
    """A copy of the bootstrap, same blob id and chunk count, whose records of a.bin's and b.bin's
    first chunks swap their uncompressed offsets: each claims the other's place in the blob."""
    image = rafs.open_image(image_dir / "bootstrap")
    first = []
    for _path, inode in walk(image):
        if inode.is_reg:
            first.append(image.file_chunks(inode.ino)[0])
    a, b = first
    assert a.uncompressed_offset != b.uncompressed_offset
    boot = bytearray((image_dir / "bootstrap").read_bytes())
    for chunk, d_off in ((a, b.uncompressed_offset), (b, a.uncompressed_offset)):
        pos = boot.find(chunk.digest)  # the record starts with the chunk's digest
        assert pos > 0 and boot.find(chunk.digest, pos + 1) < 0
        boot[pos + 56:pos + 64] = d_off.to_bytes(8, "little")
    out.write_bytes(bytes(boot))
    return out


def _store(bootstrap: Path, image_dir: Path, work: Path) -> BlobStore:
    return BlobStore(rafs.open_image(bootstrap),
                     StorageOptions("localfs", {"dir": str(image_dir / "blobs")}, work_dir=str(work),
                                    memory_cache_bytes=1))


def _read_all(store: BlobStore) -> dict[bytes, bytes]:
    return {path: store.read(store.image.chunks(inode.ino, 0, inode.size))
            for path, inode in walk(store.image) if inode.is_reg}


def truth_of(image_dir: Path) -> dict[bytes, bytes]:
    return {b"/" + name.encode(): (image_dir / "src" / name).read_bytes()
            for name in ("a.bin", "b.bin")}


@pytest.mark.parametrize("hostile_first", [True, False], ids=["hostile-first", "honest-first"])
def test_a_hostile_layout_of_the_same_blob_never_yields_wrong_bytes(image_dir, tmp_path,
                                                                    hostile_first):
    truth = truth_of(image_dir)
    hostile = hostile_copy(image_dir, tmp_path / "hostile.meta")
    work = tmp_path / "cache"
    order = [hostile, image_dir / "bootstrap"]
    if not hostile_first:
        order.reverse()
    for bootstrap in order + order:  # each fills the cache the other reads next
        store = _store(bootstrap, image_dir, work)
        try:
            assert _read_all(store) == truth, f"wrong bytes through {bootstrap.name}"
        finally:
            store.close()


def test_a_running_daemon_survives_a_hostile_image_writing_the_shared_cache(image_dir, tmp_path):
    truth = truth_of(image_dir)
    work = tmp_path / "cache"
    honest = _store(image_dir / "bootstrap", image_dir, work)
    try:
        assert _read_all(honest) == truth
        hostile = _store(hostile_copy(image_dir, tmp_path / "hostile.meta"), image_dir, work)
        try:  # the hostile image finds honest's chunks at its own offsets, then rewrites them
            assert _read_all(hostile) == truth
        finally:
            hostile.close()
        assert _read_all(honest) == truth  # the running daemon still believes its chunks ready
    finally:
        honest.close()


@pytest.mark.parametrize("shrink", [False, True], ids=["same-size", "smaller"])
def test_cache_files_reset_under_a_running_daemon_cost_refetches_only(image_dir, tmp_path,
                                                                      shrink, caplog):
    """What another image claiming another size for the blob does to the files when it opens them:
    both are truncated and set up again, at that size. The running daemon fetches its chunks
    again, once: they are cached again (a chunk left beyond the smaller end is unmarked, not
    fetched for ever), and one warning says so."""
    truth = truth_of(image_dir)
    store = _store(image_dir / "bootstrap", image_dir, tmp_path / "cache")
    try:
        assert _read_all(store) == truth
        fetched = store.backend.stats["read_count"]
        for path in store.cache.underlying_files():
            size = os.path.getsize(path)
            os.truncate(path, 0)
            os.truncate(path, size // 2 if shrink else size)
        with caplog.at_level("WARNING", logger="daemon.fetcher"):
            assert _read_all(store) == truth
        assert store.backend.stats["read_count"] > fetched  # fetched again, not served as zeros
        assert len([r for r in caplog.records if "fetching it again" in r.message]) == 1
        assert store.fetcher.stats["bad_cached"] == 8  # every chunk, counted
        fetched = store.backend.stats["read_count"]
        assert _read_all(store) == truth
        assert store.backend.stats["read_count"] == fetched  # cached again
    finally:
        store.close()


def test_chunks_larger_than_the_memory_cache_are_read_from_disk_once(tmp_path):
    """16 MiB chunks (the largest) and the default 16 MiB memory LRU: a chunk the LRU cannot
    hold would be read from the disk cache, and digest-checked, whole for every 1 MiB request."""
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(3).randbytes(3 << 20) * 12  # 36 MiB: 3 chunks, compressible
    (src / "big.bin").write_bytes(data)
    subprocess.run([str(IMAGE_TOOL), "create", "--chunk-size", "0x1000000", "--blob-dir",
                    str(tmp_path / "blobs"), "--bootstrap", str(tmp_path / "bootstrap"),
                    str(src)], check=True, capture_output=True)
    work = tmp_path / "cache"
    store = _store(tmp_path / "bootstrap", tmp_path, work)
    ino = store.image.lookup(store.image.root_ino, b"big.bin").ino
    assert store.read(store.image.chunks(ino, 0, len(data))) == data  # fills the disk cache
    store.close()
    store = _store(tmp_path / "bootstrap", tmp_path, work)
    store.fetcher.mem.clear()
    try:
        step = 1 << 20
        for off in range(0, len(data), step):
            pieces = store.image.chunks(ino, off, step)
            if off % (16 << 20) == 0:  # a chunk not in memory: read and checked in a thread
                assert not store.can_read_now(pieces)
            assert store.read(pieces) == data[off:off + step]
        assert store.fetcher.stats["disk_hits"] == 3  # once per chunk, not once per read
        assert store.backend.stats["read_count"] == 0
    finally:
        store.close()
