"""The sample source tree and what the kernel says about a tree: the truth builder tests compare to."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_source(tmp: Path) -> Path:
    src = tmp / "src"
    subprocess.run([sys.executable, str(ROOT / "fixtures/make_sample_tree.py"), str(src)],
                   check=True, capture_output=True)
    return src


def build_image(src: Path, out: Path, *options: str) -> None:
    """pynydus-image create of `src` into out/bootstrap and out/blobs (64 KiB chunks)."""
    subprocess.run([str(Path(sys.executable).parent / "pynydus-image"), "create", "--chunk-size",
                    "0x10000", *options, "--blob-dir", str(out / "blobs"), "--bootstrap",
                    str(out / "bootstrap"), str(src)], check=True, capture_output=True)


def source_manifest(src: Path) -> dict[bytes, tuple]:
    """What the kernel says about the source tree: path -> attributes, xattrs, content digest."""
    out = {}
    base = os.fsencode(src)
    entries = [base]
    for dirpath, dirs, files in os.walk(base):
        entries += [os.path.join(dirpath, n) for n in dirs + files]
    for full in entries:
        rel = b"/" if full == base else b"/" + os.path.relpath(full, base)
        st = os.lstat(full)
        xattrs = {k.encode(): os.getxattr(full, k, follow_symlinks=False)
                  for k in os.listxattr(full, follow_symlinks=False)}
        content = None
        if stat.S_ISREG(st.st_mode):
            with open(full, "rb") as f:
                content = hashlib.sha256(f.read()).hexdigest()
        link = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
        size = st.st_size if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) else None
        nlink = None if stat.S_ISDIR(st.st_mode) else st.st_nlink
        rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        mtime = 0 if rel == b"/" else st.st_mtime_ns  # the builder zeroes the root's mtime
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, size, nlink, rdev, mtime, link, xattrs, content)
    return out
