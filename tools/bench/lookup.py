"""Chunk lookup, C vs pure Python, on one large file (`make bench-lookup`).

Builds (once, under /tmp) a 160 MiB file with 4 KiB chunks (40,960 chunks) as RAFS v5 and v6,
then times `image.chunks(ino, offset, 128 KiB)` at random offsets with each implementation, and a
whole-file read through BlobStore (localfs, cold disk cache then warm). Prints the per-call
speedup of v5 and of v6, then `speedup N.Nx`, the smaller of the two, as its last line.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASE = Path("/tmp/pynydusd-bench-lookup")
FILE_SIZE = 160 << 20
CHUNK = 0x1000
READ = 128 << 10


def build() -> None:
    src = BASE / "src"
    if not (src / "big.bin").exists():
        src.mkdir(parents=True, exist_ok=True)
        rnd = random.Random(1)
        with open(src / "big.bin", "wb") as f:
            for _ in range(FILE_SIZE >> 20):
                f.write(rnd.randbytes(1 << 19) + bytes(1 << 19))
    tool = str(Path(sys.executable).parent / "pynydus-image")
    for v in ("5", "6"):
        if not (BASE / f"v{v}/bootstrap").exists():
            subprocess.run([tool, "create", "--fs-version", v, "--compressor", "lz4_block",
                            "--chunk-size", hex(CHUNK), "--blob-dir", str(BASE / f"v{v}/blobs"),
                            "--bootstrap", str(BASE / f"v{v}/bootstrap"), str(src)], check=True)


def measure() -> None:
    """Run in a child process: the implementation is chosen by the environment."""
    import rafs
    from rafs import chunkmap
    from rafs.localblob import LocalBlobs

    rnd = random.Random(7)
    offsets = [rnd.randrange(0, FILE_SIZE - READ) for _ in range(20000)]
    for v in ("5", "6"):
        image = rafs.open_image(BASE / f"v{v}/bootstrap")
        LocalBlobs(image, str(BASE / f"v{v}/blobs")).close()
        ino = image.lookup(image.root_ino, b"big.bin").ino
        image.chunks(ino, 0, READ)
        t = time.perf_counter()
        for off in offsets:
            image.chunks(ino, off, READ)
        per_call = (time.perf_counter() - t) / len(offsets)
        print(f"{chunkmap.IMPLEMENTATION} v{v} lookup {per_call * 1e6:.2f}")
    from daemon.storage import BlobStore, StorageOptions

    image = rafs.open_image(BASE / "v5/bootstrap")
    ino = image.lookup(image.root_ino, b"big.bin").ino
    store = BlobStore(image, StorageOptions("localfs", {"dir": str(BASE / "v5/blobs")},
                                            cache_type="", memory_cache_bytes=512 << 20))
    for label in ("cold", "warm"):
        t = time.perf_counter()
        for off in range(0, FILE_SIZE, READ):
            store.read(image.chunks(ino, off, READ))
        print(f"{chunkmap.IMPLEMENTATION} read-{label} {FILE_SIZE / (time.perf_counter() - t) / 1e6:.1f}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        measure()
        return 0
    build()
    runs: dict[str, list[dict[str, float]]] = {"c": [], "python": []}
    for _ in range(3):  # C and Python runs alternate, so that a drifting machine favours neither
        for impl, env in (("c", {}), ("python", {"PYNYDUSD_PUREPYTHON": "1"})):
            out = subprocess.run([sys.executable, __file__, "--child"], check=True, text=True,
                                 capture_output=True, env=os.environ | env).stdout
            runs[impl].append({line.split()[1]: float(line.split()[-1])
                               for line in out.splitlines()})
    results = {impl: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for impl, rs in runs.items()}
    print(f"{CHUNK // 1024} KiB chunks, {FILE_SIZE >> 20} MiB file, {READ >> 10} KiB random reads, "
          "median of 3 alternating runs")
    for key in results["c"]:
        unit = "MB/s" if key.startswith("read") else "us/call"
        print(f"  {key:12s} C {results['c'][key]:9.2f} {unit}   Python {results['python'][key]:9.2f} {unit}")
    v5 = results["python"]["v5"] / results["c"]["v5"]
    v6 = results["python"]["v6"] / results["c"]["v6"]
    print(f"v5 lookup speedup {v5:.1f}x")
    print(f"v6 lookup speedup {v6:.1f}x")
    print(f"speedup {min(v5, v6):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
