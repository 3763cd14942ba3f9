"""Storage figures: read amplification, request counts, cold full read vs curl (issue 4).

    python -m tools.bench.storage

Packs /usr/lib/python3.11 (a real tree: thousands of small files, some large) as RAFS v6/zstd,
pushes the blob into Debian's docker-registry on 127.0.0.1, then with a cold cache each time:
reads 1% of the files (random, fixed seed), reads every file, and compares the full read with
`curl` downloading the whole blob from the same registry plus reading the tree from local disk.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rafs
from daemon.storage import BlobStore, StorageOptions
from rafs.localblob import LocalBlobs, walk

SOURCE = "/usr/lib/python3.11"


def cold_read(image_path: Path, url: str, repo: str, paths: list, work: Path,
              amplify: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    image = rafs.open_image(image_path)
    opts = StorageOptions("registry", {"scheme": "http", "host": url, "repo": repo},
                          work_dir=str(work), amplify_io=amplify)
    store = BlobStore(image, opts)
    store.load_blob_meta()
    meta = dict(store.backend.stats)
    nbytes = 0
    t = time.perf_counter()
    for inode in paths:
        nbytes += len(store.read(image.chunks(inode.ino, 0, inode.size)))
    took = time.perf_counter() - t
    stats = store.backend.stats
    store.close()
    return {"read": nbytes, "fetched": stats["read_amount_total"] - meta["read_amount_total"],
            "requests": stats["read_count"] - meta["read_count"], "seconds": took}


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    from tests.servers import Registry

    tmp = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    tool = str(Path(sys.executable).parent / "pynydus-image")
    subprocess.run([tool, "create", "--blob-dir", str(tmp / "blobs"), "--bootstrap",
                    str(tmp / "bootstrap"), SOURCE], check=True, capture_output=True)
    blob = next((tmp / "blobs").iterdir())
    reg = Registry(tmp / "registry")
    try:
        reg.push_blob("bench/python", blob.read_bytes())
        image = rafs.open_image(tmp / "bootstrap")
        files = [i for _p, i in walk(image) if i.is_reg and i.size]
        sample = random.Random(1).sample(files, max(1, len(files) // 100))
        host = f"127.0.0.1:{reg.port}"
        runs = {}
        for amp in (0, 128 << 10, 1 << 20):
            runs[amp] = (cold_read(tmp / "bootstrap", host, "bench/python", sample, tmp / "c1", amp),
                         cold_read(tmp / "bootstrap", host, "bench/python", files, tmp / "c2", amp))
        t = time.perf_counter()
        subprocess.run(["curl", "-s", "-o", str(tmp / "whole"), f"{reg.url}/v2/bench/python/blobs/"
                        f"sha256:{blob.name}"], check=True)
        curl = time.perf_counter() - t
        t = time.perf_counter()
        with LocalBlobs(image, str(tmp / "blobs")) as local:
            for inode in files:
                local.read_file(inode.ino, verify=False)
        local_read = time.perf_counter() - t
    finally:
        reg.stop()
    print(f"image: {SOURCE}, {len(files)} files, blob {blob.stat().st_size / 2**20:.1f} MiB (zstd)")
    print(f"  curl of the whole blob {curl:.2f} s + reading the tree from the local blob "
          f"{local_read:.2f} s = {curl + local_read:.2f} s")
    for amp, (one, full) in runs.items():
        print(f"  amplify_io {amp >> 10} KiB:")
        for name, r in (("cold read of 1% of the files", one), ("cold read of every file", full)):
            print(f"    {name}: read {r['read'] / 2**20:.2f} MiB, fetched "
                  f"{r['fetched'] / 2**20:.2f} MiB (compressed), fetched/read "
                  f"{r['fetched'] / r['read']:.3f}, {r['requests']} requests, {r['seconds']:.2f} s")
        print(f"    cold full read / (curl + local read) = {full['seconds'] / (curl + local_read):.2f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
