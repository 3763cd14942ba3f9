"""Image build speed: pynydus-image beside mksquashfs and mkfs.erofs on the same tree.

    python -m tools.bench.build [--files 100000] [--gib 2]

The tree (cached under /tmp): N tiny files in 100 directories plus `--gib` GiB of data in 256 MiB
files, half random (incompressible), half repetitive text. Each tool packs it once per round,
3 rounds interleaved; medians are reported with the ratio to pynydus-image v6/zstd.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tools.bench.open_image import make_tree


def make_data(root: Path, gib: int) -> None:
    data = root / "big"
    if (data / ".done").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(5)
    text = b"".join(b"%08d the quick brown fox jumps over the lazy dog\n" % i for i in range(4096))
    for i in range(gib * 4):
        with open(data / f"file{i}.bin", "wb") as f:
            for _ in range(256):
                f.write(rnd.randbytes(1 << 20) if i % 2 == 0 else (text * 6)[: 1 << 20])
    (data / ".done").write_text("")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--gib", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    base = Path(f"/tmp/pynydusd-bench-build-{args.files}-{args.gib}")
    src = base / "src"
    make_tree(src / "small", args.files)
    make_data(src, args.gib)
    out = base / "out"
    tool = str(Path(sys.executable).parent / "pynydus-image")
    jobs = {
        "pynydus-image v6 zstd": lambda o: [tool, "create", "--blob-dir", f"{o}/b", "--bootstrap",
                                            f"{o}/m", str(src)],
        "pynydus-image v5 lz4_block": lambda o: [tool, "create", "--fs-version", "5", "--compressor",
                                                 "lz4_block", "--blob-dir", f"{o}/b", "--bootstrap",
                                                 f"{o}/m", str(src)],
        "mksquashfs (zstd level 3)": lambda o: ["mksquashfs", str(src), f"{o}/img", "-comp", "zstd", "-Xcompression-level", "3",
                                        "-no-progress", "-quiet"],
        "mkfs.erofs (uncompressed)": lambda o: ["mkfs.erofs", "--quiet", f"{o}/img", str(src)],
        "mkfs.erofs (lz4)": lambda o: ["mkfs.erofs", "--quiet", "-zlz4", f"{o}/img", str(src)],
    }
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(args.rounds):
        for name, cmd in jobs.items():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            t = time.perf_counter()
            subprocess.run(cmd(out), check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t)
            print(f"  ... {name}: {times[name][-1]:.1f} s", flush=True)
    total = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    print(f"tree: {args.files} small files + {args.gib} GiB of data ({total / 2**30:.2f} GiB), "
          f"{os.cpu_count()} cores, median of {args.rounds}")
    ref = statistics.median(times["pynydus-image v6 zstd"])
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"  {name:28s} {m:7.1f} s  ({min(ts):.1f}-{max(ts):.1f})  "
              f"{total / m / 2**20:6.0f} MiB/s  pynydus-image v6 / this = {ref / m:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
