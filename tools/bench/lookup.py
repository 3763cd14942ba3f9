"""The C hot path vs its pure-Python twins: chunk lookup, fetch runs, directory search
(`make bench-lookup`).

Builds (once, under /tmp) a 160 MiB file with 4 KiB chunks (40,960 chunks) as RAFS v5 and v6 (lz4),
then, for 2,000 random 128 KiB ranges of it, times per call:
  - pieces: `image.chunks(ino, offset, 128 KiB)` (v5_pieces / v6_pieces behind it),
  - merge:  `merge_runs(chunks of those pieces, 1 MiB)`, the grouping of a cold read's misses,
  - read:   both, as the daemon does them for a read that must fetch everything,
  - per piece / call rest: what one more piece costs, and the rest of a call (from chunk-aligned
    calls of 1 and of 32 pieces); the per-piece ratio is the ceiling of the pieces speedup,
  - chunk map: building the v6 chunk map from the chunk table (once per mount, at the first read);
and `image.lookup` of 2,000 random names (present, then absent) in a v5 and a v6 directory of
100,000 entries (v5_find_child / find_dirent behind it).
Both implementations run in one process, switched by rebinding the functions of `rafs.chunkmap`
and `rafs.dirsearch` (which the image calls through), in ROUNDS interleaved rounds; the median
round counts. Results are freed inside the timed loop, as a caller frees them. Then a whole-file
read through BlobStore (localfs, cold then warm), in child processes with and without
PYNYDUSD_PUREPYTHON=1. Prints each speedup, then `speedup N.Nx`: the smallest of the v5 and v6
pieces speedups.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (make bench-lookup): the project root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

BASE = Path("/tmp/pynydusd-bench-lookup")
FILE_SIZE = 160 << 20
CHUNK = 0x1000
READ = 128 << 10
MERGE = 1 << 20
CALLS = 2000
ROUNDS = 9
IMPLS = ("c", "python")
CHUNK_FUNCS = ("v5_pieces", "v6_pieces", "v6_chunk", "ci_entry", "merge_runs", "chunk_map")
DIR_FUNCS = ("find_dirent", "v5_find_child")


def use(impl: str) -> None:
    """Rebind the functions of rafs.chunkmap and rafs.dirsearch (which the images call through)
    to the C module ("c") or to the pure-Python twins ("python")."""
    from rafs import _chunkmap, _dirsearch, _speedups, chunkmap, dirsearch

    for module, twin, names in ((chunkmap, _chunkmap, CHUNK_FUNCS),
                                (dirsearch, _dirsearch, DIR_FUNCS)):
        for name in names:
            setattr(module, name, getattr(_speedups if impl == "c" else twin, name))


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


DIR_ENTRIES = 100_000


def dir_name(i: int) -> str:
    return f"file-{i:06d}-{i * 2654435761 % 10**9:09d}.txt"


def build_dir() -> None:
    """v5 and v6 images whose directory d holds DIR_ENTRIES empty files."""
    d = BASE / "dirsrc/d"
    if not d.exists():
        d.mkdir(parents=True)
        for i in range(DIR_ENTRIES):
            (d / dir_name(i)).touch()
    tool = str(Path(sys.executable).parent / "pynydus-image")
    for v in ("5", "6"):
        if not (BASE / f"dir-v{v}/bootstrap").exists():
            subprocess.run([tool, "create", "--fs-version", v, "--blob-dir",
                            str(BASE / f"dir-v{v}/blobs"), "--bootstrap",
                            str(BASE / f"dir-v{v}/bootstrap"), str(BASE / "dirsrc")],
                           check=True, capture_output=True)


def dir_lookups(times: dict) -> None:
    """Per-call times of image.lookup in the large directory, present and absent names."""
    import rafs

    rnd = random.Random(9)
    present = [dir_name(rnd.randrange(DIR_ENTRIES)).encode() for _ in range(CALLS)]
    absent = [n[:-4] + b".pyc" for n in present]
    for v in ("5", "6"):
        image = rafs.open_image(BASE / f"dir-v{v}/bootstrap")
        d = image.lookup(image.root_ino, b"d").ino
        for impl in IMPLS:  # right answers first, from both
            use(impl)
            if (None in (image.lookup(d, n) for n in present)
                    or any(image.lookup(d, n) for n in absent)):
                sys.exit(f"v{v} directory lookups are wrong with the {impl} implementation")
        for _ in range(ROUNDS):
            for impl in IMPLS:
                use(impl)
                for what, names in (("present", present), ("absent", absent)):
                    t0 = time.perf_counter()
                    for name in names:
                        image.lookup(d, name)
                    secs = time.perf_counter() - t0
                    times[impl].setdefault(f"v{v} dir {what}", []).append(secs / CALLS * 1e6)


def per_call() -> dict[str, dict[str, float]]:
    """Median per-call microseconds: {"c"|"python": {"v5 pieces": us, ...}}."""
    import rafs
    from rafs import chunkmap
    from rafs.localblob import LocalBlobs

    try:
        from rafs import _speedups
    except ImportError:
        sys.exit("rafs._speedups is not built: run `make setup` (a C compiler is needed)")
    if getattr(_speedups, "API", None) != chunkmap.C_API:
        sys.exit("rafs._speedups is a stale build (another API): run `make setup`")
    rnd = random.Random(7)
    offsets = [rnd.randrange(0, FILE_SIZE - READ) for _ in range(CALLS)]
    aligned = [off // CHUNK * CHUNK for off in offsets]
    times: dict[str, dict[str, list[float]]] = {impl: {} for impl in IMPLS}
    try:
        for v in ("5", "6"):
            image = rafs.open_image(BASE / f"v{v}/bootstrap")
            LocalBlobs(image, str(BASE / f"v{v}/blobs")).close()
            ino = image.lookup(image.root_ino, b"big.bin").ino
            wanted = [[p.chunk for p in image.chunks(ino, off, READ) if p.chunk]
                      for off in offsets]
            for _ in range(ROUNDS):
                for impl in IMPLS:
                    use(impl)
                    chunks, merge = image.chunks, chunkmap.merge_runs
                    chunks(ino, 0, READ)
                    t0 = time.perf_counter()
                    for off in offsets:
                        chunks(ino, off, READ)
                    t1 = time.perf_counter()
                    for w in wanted:
                        merge(w, MERGE)
                    t2 = time.perf_counter()
                    for off in offsets:
                        merge([p.chunk for p in chunks(ino, off, READ) if p.chunk], MERGE)
                    t3 = time.perf_counter()
                    for what, secs in (("pieces", t1 - t0), ("merge", t2 - t1), ("read", t3 - t2)):
                        times[impl].setdefault(f"v{v} {what}", []).append(secs / CALLS * 1e6)
                    for what, us in split(chunks, ino, aligned).items():
                        times[impl].setdefault(f"v{v} {what}", []).append(us)
                    if v == "6":  # building the chunk map (once per mount, at the first read)
                        off, size = image._chunk_table
                        t0 = time.perf_counter()
                        chunkmap.chunk_map(image.buf.data, off, size, image.block_size)
                        times[impl].setdefault(f"v6 chunk map ({size // 80:,} records)", []).append(
                            (time.perf_counter() - t0) * 1e6)
        dir_lookups(times)
    finally:
        use(chunkmap.IMPLEMENTATION)
    return {impl: {k: statistics.median(v) for k, v in t.items()} for impl, t in times.items()}


def split(chunks, ino: int, aligned: list[int]) -> dict[str, float]:
    """Where a pieces call spends its time, in microseconds: per piece (the slope between
    chunk-aligned calls of 1 and of READ // CHUNK pieces) and the rest of a call (the intercept).
    The per-piece ratio of the two implementations bounds their per-call speedup on long reads."""
    n = READ // CHUNK
    t = []
    for size in (CHUNK, READ):
        t0 = time.perf_counter()
        for off in aligned:
            chunks(ino, off, size)
        t.append((time.perf_counter() - t0) / CALLS * 1e6)
    piece = (t[1] - t[0]) / (n - 1)
    return {"per piece": piece, "call rest": t[0] - piece}


def end_to_end() -> None:
    """Run in a child process: the implementation is chosen by the environment."""
    import rafs
    from daemon.storage import BlobStore, StorageOptions
    from rafs import chunkmap

    image = rafs.open_image(BASE / "v5/bootstrap")
    ino = image.lookup(image.root_ino, b"big.bin").ino
    store = BlobStore(image, StorageOptions("localfs", {"dir": str(BASE / "v5/blobs")},
                                            cache_type="", memory_cache_bytes=512 << 20))
    for label in ("cold", "warm"):
        t = time.perf_counter()
        for off in range(0, FILE_SIZE, READ):
            store.read(image.chunks(ino, off, READ), ino, off)
        print(f"{chunkmap.IMPLEMENTATION} read-{label} {FILE_SIZE / (time.perf_counter() - t) / 1e6:.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one end-to-end run
    if ap.parse_args(argv).child:
        end_to_end()
        return 0
    build()
    build_dir()
    calls = per_call()
    runs: dict[str, list[dict[str, float]]] = {"c": [], "python": []}
    for _ in range(3):  # C and Python runs alternate, so that a drifting machine favours neither
        for impl, env in (("c", {}), ("python", {"PYNYDUSD_PUREPYTHON": "1"})):
            out = subprocess.run([sys.executable, __file__, "--child"], check=True, text=True,
                                 capture_output=True, env=os.environ | env).stdout
            runs[impl].append({line.split()[1]: float(line.split()[-1])
                               for line in out.splitlines()})
    reads = {impl: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
             for impl, rs in runs.items()}
    print(f"{CHUNK // 1024} KiB chunks, {FILE_SIZE >> 20} MiB file, {CALLS} random {READ >> 10} KiB "
          f"ranges; {CALLS} names in a {DIR_ENTRIES:,}-entry directory; per call: median of "
          f"{ROUNDS} interleaved rounds")
    width = max(map(len, calls["c"]))
    for key in calls["c"]:
        c, py = calls["c"][key], calls["python"][key]
        print(f"  {key:{width}s} C {c:9.2f} us   Python {py:9.2f} us   {py / c:5.1f}x")
        if key.endswith("call rest"):
            print("    (per piece: the slope between aligned 1-piece and "
                  f"{READ // CHUNK}-piece calls; its ratio bounds the pieces speedup)")
    print("whole-file read through BlobStore (localfs, no disk cache), median of 3 alternating runs")
    for key in reads["c"]:
        print(f"  {key:{width}s} C {reads['c'][key]:9.1f} MB/s Python {reads['python'][key]:9.1f} MB/s")
    v5 = calls["python"]["v5 pieces"] / calls["c"]["v5 pieces"]
    v6 = calls["python"]["v6 pieces"] / calls["c"]["v6 pieces"]
    print(f"speedup {min(v5, v6):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
