"""`pynydusd-cache list` and `gc` on a work_dir shared by images: what a running daemon uses is
never removed, kept images stay, and a daemon opening a blob while gc removes it starts afresh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rafs
from daemon import cachegc
from daemon.storage import BlobStore, StorageOptions
from rafs.localblob import walk
from tests.mountutil import wait_for
from tests.storage.test_shared_cache import build_pair_image
from tests.treeutil import build_image, make_source

TOOL = Path(sys.executable).parent / "pynydusd-cache"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Two images with a blob each (different blobs)."""
    tmp = tmp_path_factory.mktemp("gc")
    first = build_pair_image(tmp / "pair")
    build_image(make_source(tmp), tmp / "sample")
    return [first, tmp / "sample"]


def _store(image: Path, work: Path) -> BlobStore:
    return BlobStore(rafs.open_image(image / "bootstrap"),
                     StorageOptions("localfs", {"dir": str(image / "blobs")}, work_dir=str(work)))


def _read_all(store: BlobStore) -> int:
    n = 0
    for _path, inode in walk(store.image):
        if inode.is_reg:
            n += len(store.read(store.image.chunks(inode.ino, 0, inode.size)))
    return n


def _blob_id(image: Path) -> str:
    return rafs.open_image(image / "bootstrap").blobs[0].blob_id


def _tool(*args: str) -> str:
    return subprocess.run([str(TOOL), *args], check=True, capture_output=True, text=True).stdout


def test_gc_removes_only_what_no_daemon_uses(images, tmp_path):
    work = tmp_path / "work"
    idle, running = images
    store = _store(idle, work)
    _read_all(store)
    store.close()
    live = _store(running, work)
    try:
        size = _read_all(live)
        live.cache.commit()
        (work / "pynydusd" / "notes.txt").write_text("not ours")
        listed = {b["blob_id"]: b for b in json.loads(_tool("list", str(work), "--json"))}
        assert set(listed) == {_blob_id(idle), _blob_id(running)}
        assert listed[_blob_id(running)]["in_use"] and not listed[_blob_id(idle)]["in_use"]
        for b in listed.values():
            assert b["ready"] == b["chunks"] > 0 and b["disk_bytes"] > 0
        assert _blob_id(idle) in _tool("gc", str(work), "--dry-run")
        assert os.path.exists(work / "pynydusd" / f"{_blob_id(idle)}.data")  # dry run
        out = _tool("gc", str(work))
        assert "removed 1 blobs" in out
        assert sorted(os.listdir(work / "pynydusd")) == sorted(
            [f"{_blob_id(running)}.data", f"{_blob_id(running)}.ready", "notes.txt"])
        fetched = live.backend.stats["read_count"]
        assert _read_all(live) == size  # the running daemon's cache is intact
        assert live.backend.stats["read_count"] == fetched
    finally:
        live.close()
    # now unused: gone too, unless its image is kept
    assert "removed 0 blobs" in _tool("gc", str(work), "--keep-image",
                                      str(running / "bootstrap"))
    assert "removed 1 blobs" in _tool("gc", str(work))
    assert os.listdir(work / "pynydusd") == ["notes.txt"]


def test_gc_removes_a_data_file_left_without_its_ready_file(images, tmp_path):
    work = tmp_path / "work"
    store = _store(images[0], work)
    _read_all(store)
    store.close()
    os.unlink(work / "pynydusd" / f"{_blob_id(images[0])}.ready")
    assert [b.blob_id for b in cachegc.collect(str(work))] == [_blob_id(images[0])]
    assert os.listdir(work / "pynydusd") == []


def test_gc_by_age_and_by_size_goes_least_recently_used_first(images, tmp_path):
    work = tmp_path / "work"
    for image in images:
        store = _store(image, work)
        _read_all(store)
        store.close()
    old, recent = images
    root = work / "pynydusd"
    week_ago = time.time() - 8 * 86400
    os.utime(root / f"{_blob_id(old)}.ready", (week_ago, week_ago))
    blobs = cachegc.scan(str(work))
    assert [b.blob_id for b in blobs] == [_blob_id(old), _blob_id(recent)]  # LRU first
    assert "removed 0 blobs" in _tool("gc", str(work), "--unused-for", "30d")
    assert "would remove 1 blobs" in _tool("gc", str(work), "--unused-for", "7d", "--dry-run")
    total = sum(b.disk_bytes for b in blobs)
    removed = cachegc.collect(str(work), max_bytes=total - 1)
    assert [b.blob_id for b in removed] == [_blob_id(old)]  # one was enough
    assert [b.blob_id for b in cachegc.scan(str(work))] == [_blob_id(recent)]
    assert cachegc.collect(str(work), max_bytes=total) == []


def test_a_daemon_opening_a_blob_that_gc_removes_starts_afresh(images, tmp_path, monkeypatch):
    """gc holds the exclusive lock while it unlinks; a daemon that opened the old files waits
    for it, then finds them unlinked and creates new ones instead of caching into the void."""
    from daemon import chunkcache

    work = tmp_path / "work"
    image = images[0]
    store = _store(image, work)
    size = _read_all(store)
    store.close()
    base = work / "pynydusd" / _blob_id(image)
    real_flock = chunkcache.fcntl.flock
    removed = []

    def flock_after_gc(fd, op):  # gc runs between the daemon's open and its lock
        if not removed:  # (gc's own flock goes through here too)
            removed.append(None)
            removed[0] = cachegc.remove(str(work), _blob_id(image))
        return real_flock(fd, op)

    monkeypatch.setattr(chunkcache.fcntl, "flock", flock_after_gc)
    store = _store(image, work)
    monkeypatch.setattr(chunkcache.fcntl, "flock", real_flock)
    try:
        assert removed == [True]
        assert _read_all(store) == size
        assert store.backend.stats["read_count"] > 0  # fetched again: the cache was gone
        store.cache.commit()
        f = store.cache.files[0]
        assert os.fstat(f.ready_fd).st_ino == os.stat(f"{base}.ready").st_ino  # the new files
        assert cachegc.scan(str(work))[0].ready == cachegc.scan(str(work))[0].chunks
    finally:
        store.close()


def test_remove_refuses_what_is_no_blob_id(tmp_path):
    with pytest.raises(ValueError):
        cachegc.remove(str(tmp_path), "../../etc/passwd")
    assert cachegc.scan(str(tmp_path / "nothing")) == []


def test_links_fifos_and_foreign_directories_are_never_followed(images, tmp_path):
    """Files planted in the cache directory: a symlink named like a blob's file must not get its
    target overwritten (by a daemon) or counted and opened (by list/gc), a FIFO must not hang
    them, and a cache directory others can write to is not used at all."""
    work = tmp_path / "work"
    image = images[0]
    blob_id = _blob_id(image)
    root = work / "pynydusd"
    root.mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n" * 100)
    (root / f"{blob_id}.ready").symlink_to(victim)
    (root / f"{blob_id}.data").symlink_to(victim)
    store = _store(image, work)
    try:
        assert _read_all(store) > 0  # served, from memory only
        assert store.cache.files == {}
    finally:
        store.close()
    assert victim.read_text() == "precious\n" * 100
    os.mkfifo(root / f"{'c' * 64}.ready")
    blobs = {b.blob_id: b for b in cachegc.scan(str(work))}  # no hang on the FIFO
    assert blobs[blob_id].disk_bytes == 0
    assert "removed" in subprocess.run([str(TOOL), "gc", str(work)], capture_output=True,
                                       text=True, timeout=30).stdout
    assert victim.read_text() == "precious\n" * 100
    open_dir = tmp_path / "open" / "pynydusd"
    open_dir.mkdir(parents=True)
    open_dir.chmod(0o777)
    store = _store(image, tmp_path / "open")
    try:
        assert store.cache.files == {}  # others could plant files there: not used
        assert _read_all(store) > 0
    finally:
        store.close()
    assert os.listdir(open_dir) == []
    elsewhere = tmp_path / "elsewhere"  # a private directory, but reached through a link
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "pynydusd").symlink_to(elsewhere)
    store = _store(image, tmp_path / "linked")
    try:
        assert store.cache.files == {}
    finally:
        store.close()
    assert os.listdir(elsewhere) == []


def test_a_daemon_closing_marks_its_blobs_used_now(images, tmp_path):
    work = tmp_path / "work"
    store = _store(images[0], work)
    _read_all(store)
    ready = work / "pynydusd" / f"{_blob_id(images[0])}.ready"
    old = time.time() - 10 * 86400
    os.utime(ready, (old, old))  # opened 10 days ago, served from the cache since
    store.close()
    assert time.time() - ready.stat().st_mtime < 60
    assert cachegc.collect(str(work), unused_for_s=7 * 86400) == []


def test_a_running_daemon_marks_its_blobs_used_even_if_it_only_reads(images, tmp_path,
                                                                     monkeypatch):
    """A daemon serving a warm cache writes nothing; after a kill -9 its blobs must not look
    unused since it started."""
    from daemon import chunkcache

    monkeypatch.setattr(chunkcache, "COMMIT_S", 0.05)
    monkeypatch.setattr(chunkcache, "TOUCH_S", 0.2)
    work = tmp_path / "work"
    store = _store(images[0], work)
    _read_all(store)
    store.close()
    ready = work / "pynydusd" / f"{_blob_id(images[0])}.ready"
    store = _store(images[0], work)
    try:
        old = time.time() - 10 * 86400
        os.utime(ready, (old, old))
        _read_all(store)
        assert store.backend.stats["read_count"] == 0  # only cache hits
        wait_for(lambda: time.time() - ready.stat().st_mtime < 60, timeout=5,
                 what="the .ready file touched while the daemon runs")
    finally:
        store.close()


def test_gc_leaves_nothing_of_its_own_behind_when_it_cannot_remove(images, tmp_path):
    root = tmp_path / "work" / "pynydusd"
    root.mkdir(parents=True, mode=0o700)
    (root / f"{'d' * 64}.data").mkdir()  # not a file of ours
    (root / f"{'e' * 64}.data").symlink_to(tmp_path)
    r = subprocess.run([str(TOOL), "gc", str(tmp_path / "work")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(root)) == [f"{'d' * 64}.data", f"{'e' * 64}.data"]
