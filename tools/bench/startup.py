"""exec -> FUSE mount in place: median of N runs, for `pynydusd` and the `dist/nydusd` drop-in.

    python -m tools.bench.startup [--runs 10]

Each run starts the daemon on a fresh mountpoint and polls /proc/self/mountinfo every 1 ms until
the FUSE mount appears (what sealer's `sleep 0.5` races against), then stops it with SIGTERM.
The drop-in's first run after a new build also unpacks its compiled modules; that run is reported
on its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def time_mount(argv: list[str], mnt: str) -> float:
    """Seconds from exec to the mount being visible."""
    t = time.perf_counter()
    p = subprocess.Popen(argv + [mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not _mounted(mnt):
        if p.poll() is not None:
            raise RuntimeError(f"daemon exited {p.returncode}: {' '.join(argv)}")
        time.sleep(0.001)
    took = time.perf_counter() - t
    p.terminate()
    p.wait(timeout=10)
    return took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args(argv)
    sample = ROOT / "fixtures/build/sample-v6"
    if not (sample / "bootstrap").exists():
        sys.exit("run `make fixtures` first")
    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    mnt = str(tmp / "mnt")
    os.mkdir(mnt)
    common = ["--bootstrap", str(sample / "bootstrap"), "--backend", str(sample / "blobs"),
              "--cache-dir", str(tmp / "cache"), "--mountpoint"]
    dropin = tmp / "nydusd"
    subprocess.run([sys.executable, str(ROOT / "tools/dropin.py"), "--out", str(dropin)],
                   check=True, capture_output=True)
    shutil.rmtree("/var/cache/pynydusd" if os.geteuid() == 0 else
                  os.path.expanduser("~/.cache/pynydusd"), ignore_errors=True)
    first = time_mount([str(dropin)] + common, mnt)
    rows = {"pynydusd (venv)": [str(Path(sys.executable).parent / "pynydusd")] + common,
            "nydusd drop-in (/usr/bin/python3 -sE)": [str(dropin)] + common}
    print(f"exec -> mounted, {args.runs} runs each, {os.cpu_count()} cores")
    print(f"  drop-in first run (unpacks itself): {first * 1000:.0f} ms")
    for name, cmd in rows.items():
        times = sorted(time_mount(cmd, mnt) for _ in range(args.runs))
        print(f"  {name}: median {statistics.median(times) * 1000:.0f} ms "
              f"(min {times[0] * 1000:.0f}, max {times[-1] * 1000:.0f})")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
