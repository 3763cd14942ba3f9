"""Mounting a hostile (mutated) image never hangs the mount or a process walking it: the daemon
either refuses the image with a clear error or serves what it can, answering EIO for the rest."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mountutil import PYNYDUSD, Daemon, fstype_at, require_fuse
from tests.treeutil import make_source

IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"
CASES = 12  # per version
_VALUES = [0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]

WALK = r"""
import os, sys
n = 0
for root, dirs, files in os.walk(sys.argv[1]):
    for name in dirs + files:
        p = os.path.join(root, name)
        try:
            os.lstat(p); os.listxattr(p, follow_symlinks=False)
            if os.path.islink(p):
                os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    while f.read(1 << 20):
                        pass
        except OSError:
            pass
        n += 1
print(n)
"""


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile-mount")
    src = make_source(tmp)
    out = {}
    for v in ("5", "6"):
        subprocess.run([str(IMAGE_TOOL), "create", "--fs-version", v, "--chunk-size", "0x10000",
                        "--blob-dir", str(tmp / "blobs"), "--bootstrap", str(tmp / f"v{v}"),
                        str(src)], check=True, capture_output=True)
        out[v] = (tmp / f"v{v}").read_bytes()
    return tmp, out


def mutate(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        pos = rnd.randrange(len(b) - 8) & ~3
        b[pos:pos + 4] = (rnd.choice(_VALUES) if rnd.random() < 0.7
                          else rnd.getrandbits(32)).to_bytes(4, "little")
    return bytes(b)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("version", ["5", "6"])
def test_mutated_images_never_hang_the_mount(seeds, tmp_path, version):
    require_fuse()
    tmp, data = seeds
    rnd = random.Random(int(version))
    outcomes = {"refused": 0, "served": 0}
    for case in range(CASES):
        boot = tmp_path / f"boot{case}"
        boot.write_bytes(mutate(data[version], rnd))
        mnt = tmp_path / f"mnt{case}"
        mnt.mkdir()
        d = Daemon([str(PYNYDUSD), "--bootstrap", str(boot), "--backend", str(tmp / "blobs"),
                    "--cache-dir", str(tmp_path / f"cache{case}"), "--no-prefetch", str(mnt)], mnt)
        try:
            if d.proc.poll() is not None:  # refused at start: a one-line reason, no traceback
                out = d.output()
                assert d.proc.returncode != 0 and "Traceback" not in out, out
                assert "Error" in out or "error" in out, out
                outcomes["refused"] += 1
                continue
            walk = subprocess.run([sys.executable, "-c", WALK, str(mnt)], capture_output=True,
                                  text=True, timeout=60)  # a hang fails the test here
            assert walk.returncode == 0, walk.stderr
            assert d.proc.poll() is None, f"daemon died on case {case}: {d.output()}"
            assert "Traceback" not in d.output(), d.output()
            outcomes["served"] += 1
        finally:
            d.stop()
            if fstype_at(mnt):
                subprocess.run(["umount", "-l", str(mnt)], check=False)
    print(f"\nv{version}: {outcomes}")
