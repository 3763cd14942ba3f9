"""stat() of random names in a 100,000-entry directory through a real pynydusd mount.

Uses the v6 image `make bench-lookup` builds (tools/bench/lookup.py, under /tmp), mounts it from
local blobs three times: with the C hot path, with the pure-Python twins, and with the C path
while prefetch walks the whole tree. Each mount stats 2,000 random present names, then 2,000
absent ones (each a kernel lookup the daemon answers: no name repeats within a pass). `--tree DIR`
runs the daemon from another checkout (e.g. an older commit, for a before/after) instead of this one.
Prints microseconds per stat.

    python -m tools.bench.dirstat [--tree DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.bench.lookup import BASE, DIR_ENTRIES, build_dir, dir_name

CALLS = 2000
DAEMON = "import sys; sys.argv[0] = 'pynydusd'; from daemon.cli import main; sys.exit(main())"


def one_mount(tree: Path, env: dict[str, str], prefetch: bool) -> tuple[float, float]:
    """(us per present stat, us per absent stat) on a fresh mount."""
    with tempfile.TemporaryDirectory(prefix="pynydusd-dirstat-") as tmp:
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        proc = subprocess.Popen(
            [sys.executable, "-c", DAEMON, "--bootstrap", str(BASE / "dir-v6/bootstrap"),
             "--backend", str(BASE / "dir-v6/blobs"), "--cache-dir", str(Path(tmp) / "cache"),
             "--prefetch" if prefetch else "--no-prefetch", str(mnt)],
            env=os.environ | {"PYTHONPATH": str(tree)} | env, cwd=tree,  # -c puts the cwd first
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not os.path.ismount(mnt):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"pynydusd did not mount (exit {proc.poll()})")
                time.sleep(0.05)
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
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            proc.wait(timeout=20)
    return (t1 - t0) / CALLS * 1e6, (t2 - t1) / CALLS * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[2],
                    help="the checkout whose daemon to run (default: this one)")
    args = ap.parse_args()
    build_dir()
    print(f"stat() through the mount, {CALLS} names each, {DIR_ENTRIES:,}-entry v6 directory, "
          f"daemon from {args.tree}")
    for label, env, prefetch in (("C hot path", {}, False),
                                 ("pure Python", {"PYNYDUSD_PUREPYTHON": "1"}, False),
                                 ("C, prefetch walking the tree", {}, True)):
        present, absent = one_mount(args.tree, env, prefetch)
        print(f"  {label:30s} present {present:7.0f} us   absent {absent:7.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
