"""A full cache disk: reads stay correct (served uncached, one warning), the cache stays consistent."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rafs
from daemon.chunkcache import ChunkCache
from daemon.storage import BlobStore, StorageOptions
from rafs.localblob import LocalBlobs, walk
from tests.treeutil import make_source

IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"


def test_reads_survive_a_full_cache_disk(tmp_path, caplog):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    src = make_source(tmp_path)
    out = tmp_path / "img"
    subprocess.run([str(IMAGE_TOOL), "create", "--chunk-size", "0x10000", "--blob-dir",
                    str(out / "blobs"), "--bootstrap", str(out / "bootstrap"), str(src)], check=True,
                   capture_output=True)
    work = tmp_path / "small"
    work.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(work)], check=True)
    try:
        image = rafs.open_image(out / "bootstrap")
        truth = LocalBlobs(image, str(out / "blobs"))
        store = BlobStore(image, StorageOptions("localfs", {"dir": str(out / "blobs")},
                                                work_dir=str(work), memory_cache_bytes=1))
        with caplog.at_level(logging.WARNING):
            for _p, i in walk(image):
                if i.is_reg:
                    assert store.read(image.chunks(i.ino, 0, i.size)) == truth.read_file(i.ino)
        warnings = [r for r in caplog.records if "cache disk full" in r.getMessage()]
        assert len(warnings) == 1
        store.close()
        # space comes back: the same cache is reused, stays consistent, and fills up
        subprocess.run(["mount", "-o", "remount,size=64m", str(work)], check=True)
        store = BlobStore(rafs.open_image(out / "bootstrap"),
                          StorageOptions("localfs", {"dir": str(out / "blobs")}, work_dir=str(work)))
        for _p, i in walk(store.image):
            if i.is_reg:
                assert store.read(store.image.chunks(i.ino, 0, i.size)) == truth.read_file(i.ino)
        store.close()
        cache = ChunkCache(str(work), image.blobs)
        assert cache.all_ready()
        cache.close()
    finally:
        subprocess.run(["umount", "-l", str(work)], check=False)
