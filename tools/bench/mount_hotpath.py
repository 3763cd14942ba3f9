"""The C hot path seen through a real pynydusd mount, against the pure-Python twins.

Uses the images `make bench-lookup` builds (tools/bench/lookup.py, under /tmp) from local blobs:
  - stat() of 2,000 random present names, then 2,000 absent ones, in a v6 directory of 100,000
    entries (each a kernel lookup the daemon answers: no name repeats within a pass); with the C
    hot path, with the twins, and with C while prefetch walks the whole tree;
  - reading the 160 MiB file of 40,960 4 KiB chunks (v5 and v6, lz4) with 128 KiB reads: cold (an
    empty chunk cache) and warm (the chunk cache full, the kernel's page cache dropped), with C
    and with the twins.
  - the first read after mounting an image of MANY_CHUNKS chunks (100,000 small files): the
    time to read one file of it, which includes building the v6 chunk map from the chunk table.
`--tree DIR` runs the daemon from another checkout (e.g. an older commit, for a before/after).

    python -m tools.bench.mount_hotpath [--tree DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.bench.lookup import BASE, CHUNK, DIR_ENTRIES, FILE_SIZE, READ, build, build_dir, dir_name

CALLS = 2000
DAEMON = "import sys; sys.argv[0] = 'pynydusd'; from daemon.cli import main; sys.exit(main())"


@contextlib.contextmanager
def mounted(tree: Path, image: str, env: dict[str, str], prefetch: bool, cache: Path):
    """A pynydusd mount of BASE/image from `tree`'s sources; yields the mountpoint."""
    with tempfile.TemporaryDirectory(prefix="pynydusd-hotpath-") as tmp:
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        log = open(Path(tmp) / "daemon.log", "w+")
        proc = subprocess.Popen(
            [sys.executable, "-c", DAEMON, "--bootstrap", str(BASE / image / "bootstrap"),
             "--backend", str(BASE / image / "blobs"), "--cache-dir", str(cache),
             "--prefetch" if prefetch else "--no-prefetch", str(mnt)],
            env=os.environ | {"PYTHONPATH": str(tree)} | env, cwd=tree,  # -c puts the cwd first
            stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not os.path.ismount(mnt):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"pynydusd did not mount (exit {proc.poll()})")
                time.sleep(0.05)
            # the daemon names the implementation it serves with (an older tree may not)
            want = "python" if env.get("PYNYDUSD_PUREPYTHON") == "1" else "c"
            said = Path(log.name).read_text()
            if "chunk lookup: " in said and f"chunk lookup: {want})" not in said:
                raise SystemExit(f"the daemon does not use the {want} hot path: {said[-300:]}")
            yield mnt
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            proc.wait(timeout=20)
            log.close()


def stat_names(tree: Path, env: dict[str, str], prefetch: bool) -> tuple[float, float]:
    """(us per present stat, us per absent stat) on a fresh mount of the large directory."""
    with tempfile.TemporaryDirectory() as cache, \
            mounted(tree, "dir-v6", env, prefetch, Path(cache)) as mnt:
        rnd = random.Random(11)
        names = [dir_name(i) for i in rnd.sample(range(DIR_ENTRIES), CALLS)]
        t0 = time.perf_counter()
        for n in names:
            os.stat(mnt / "d" / n)
        t1 = time.perf_counter()
        for n in names:
            try:
                os.stat(mnt / "d" / (n[:-4] + ".pyc"))
            except FileNotFoundError:
                pass
            else:
                raise SystemExit(f"{n[:-4]}.pyc should not exist")
        t2 = time.perf_counter()
    return (t1 - t0) / CALLS * 1e6, (t2 - t1) / CALLS * 1e6


def read_file(path: Path) -> float:
    """MB/s of reading `path` whole in 128 KiB reads, checked against the source file."""
    want = hashlib.sha256((BASE / "src/big.bin").read_bytes()).digest()
    h = hashlib.sha256()
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(READ):
            h.update(block)
    secs = time.perf_counter() - t0
    if h.digest() != want:
        raise SystemExit(f"{path}: wrong bytes")
    return FILE_SIZE / secs / 1e6


def large_file(tree: Path, image: str, env: dict[str, str]) -> tuple[float, float]:
    """(cold MB/s, warm MB/s) of the large file: an empty chunk cache, then a full one."""
    with tempfile.TemporaryDirectory() as cache:
        with mounted(tree, image, env, False, Path(cache)) as mnt:
            cold = read_file(mnt / "big.bin")
        with mounted(tree, image, env, False, Path(cache)) as mnt:  # a new daemon: no memory cache
            Path("/proc/sys/vm/drop_caches").write_text("3")
            warm = read_file(mnt / "big.bin")
    return cold, warm


MANY_CHUNKS = 100_000


def build_many_chunks() -> None:
    """A v6 image of MANY_CHUNKS files of distinct bytes, one chunk each, in 100 directories."""
    src = BASE / "chunksrc"
    if not (src / "done").exists():
        for i in range(MANY_CHUNKS):
            d = src / f"d{i % 100:02d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i:06d}").write_bytes(f"file {i}\n".encode() * 8)
        (src / "done").touch()
    if not (BASE / "chunks-v6/bootstrap").exists():
        subprocess.run([str(Path(sys.executable).parent / "pynydus-image"), "create",
                        "--fs-version", "6", "--compressor", "lz4_block", "--blob-dir",
                        str(BASE / "chunks-v6/blobs"), "--bootstrap",
                        str(BASE / "chunks-v6/bootstrap"), str(src)], check=True)


def first_read(tree: Path, env: dict[str, str], rounds: int = 5) -> float:
    """Median milliseconds to read one file right after mounting the many-chunk image."""
    times = []
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as cache, \
                mounted(tree, "chunks-v6", env, False, Path(cache)) as mnt:
            i = 7919 * (r + 1) % MANY_CHUNKS
            t0 = time.perf_counter()
            data = (mnt / f"d{i % 100:02d}/f{i:06d}").read_bytes()
            times.append((time.perf_counter() - t0) * 1e3)
            if data != f"file {i}\n".encode() * 8:
                raise SystemExit("first read: wrong bytes")
    return sorted(times)[len(times) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[2],
                    help="the checkout whose daemon to run (default: this one)")
    args = ap.parse_args()
    build()
    build_dir()
    pure = {"PYNYDUSD_PUREPYTHON": "1"}
    print(f"daemon from {args.tree}")
    print(f"stat() through the mount, {CALLS} names each, {DIR_ENTRIES:,}-entry v6 directory")
    for label, env, prefetch in (("C hot path", {}, False), ("pure Python", pure, False),
                                 ("C, prefetch walking the tree", {}, True)):
        present, absent = stat_names(args.tree, env, prefetch)
        print(f"  {label:30s} present {present:7.0f} us   absent {absent:7.0f} us")
    print(f"reading the {FILE_SIZE >> 20} MiB file of {CHUNK // 1024} KiB chunks, {READ >> 10} KiB "
          "reads (local blobs)")
    for v in ("5", "6"):
        for label, env in (("C hot path", {}), ("pure Python", pure)):
            cold, warm = large_file(args.tree, f"v{v}", env)
            print(f"  v{v} {label:27s} cold {cold:7.1f} MB/s   warm {warm:7.1f} MB/s")
    build_many_chunks()
    print(f"the first read after mounting a v6 image of {MANY_CHUNKS:,} chunks (median of 5 mounts)")
    for label, env in (("C hot path", {}), ("pure Python", pure)):
        print(f"  {label:30s} {first_read(args.tree, env):7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
