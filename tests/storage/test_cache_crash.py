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


def test_kill_9_never_leaves_a_wrong_ready_chunk(tmp_path):
    src = make_source(tmp_path)
    out = tmp_path / "img"
    subprocess.run([str(IMAGE_TOOL), "create", "--chunk-size", "0x1000", "--blob-dir",
                    str(out / "blobs"), "--bootstrap", str(out / "bootstrap"), str(src)], check=True,
                   capture_output=True)
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
