"""How long `rafs.open_image` takes on a 100k-file image, and what a first lookup costs.

    python -m tools.bench.open_image [--files 100000]

Builds (once, cached under /tmp) a tree of N tiny files in 100 directories, packs it as v5 and v6
with pynydus-image, then times open_image (median of 20) and a lookup + getattr of one file,
and reports the Python heap growth of an open (tracemalloc).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import rafs


def make_tree(root: Path, files: int) -> None:
    if (root / ".done").exists():
        return
    per_dir = max(1, files // 100)
    for i in range(files):
        d = root / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}").write_bytes(b"%d\n" % i)
    (root / ".done").write_text("")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    args = ap.parse_args(argv)
    base = Path(f"/tmp/pynydusd-bench-{args.files}")
    make_tree(base / "src", args.files)
    tool = str(Path(sys.executable).parent / "pynydus-image")
    for v in ("5", "6"):
        out = base / f"v{v}"
        if not (out / "bootstrap").exists():
            t = time.perf_counter()
            subprocess.run([tool, "create", "--fs-version", v, "--blob-dir", str(out / "blobs"),
                            "--bootstrap", str(out / "bootstrap"), str(base / "src")], check=True,
                           capture_output=True)
            print(f"v{v}: built {args.files} files in {time.perf_counter() - t:.1f} s")
        boot = out / "bootstrap"
        times = []
        for _ in range(20):
            t = time.perf_counter()
            image = rafs.open_image(boot)
            times.append(time.perf_counter() - t)
            image.close()
        tracemalloc.start()
        image = rafs.open_image(boot)
        heap = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        t = time.perf_counter()
        d = image.lookup(image.root_ino, b"d050")
        f = image.lookup(d.ino, b"f%06d" % (50 * (args.files // 100)))
        image.getattr(f.ino)
        look = time.perf_counter() - t
        print(f"v{v}: {os.path.getsize(boot) / 1e6:.1f} MB bootstrap, open_image median "
              f"{statistics.median(times) * 1000:.2f} ms, heap after open {heap / 1024:.0f} KiB, "
              f"first lookup of /d050/<file> {look * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
