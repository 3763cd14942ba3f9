"""Mount a RAFS v6 bootstrap with the kernel EROFS driver: an independent oracle for tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import rafs
from rafs.localblob import LocalBlobs


def require_kernel_erofs() -> None:
    """Skip unless we are root with losetup and an EROFS-capable kernel."""
    if os.geteuid() != 0:
        pytest.skip("kernel EROFS oracle needs root (losetup, mount)")
    if not shutil.which("losetup"):
        pytest.skip("losetup (util-linux) is not installed")
    if "erofs" not in Path("/proc/filesystems").read_text():
        pytest.skip("the kernel has no EROFS driver")


def write_uncompressed_blob(image: rafs.Image, blob_dir: str, blob_index: int, out: Path) -> None:
    """Write blob `blob_index` decompressed, each chunk at its uncompressed offset (.blob.data)."""
    blob = image.blobs[blob_index]
    with LocalBlobs(image, blob_dir) as blobs, open(out, "wb") as f:
        f.truncate(blob.uncompressed_size)
        for i in range(blob.chunk_count):
            c_off, c_size, d_off, d_size, flags = image._ci[blob_index].entry(i)
            chunk = rafs.ChunkInfo(blob_index, i, flags, c_off, c_size, d_off, d_size, b"")
            f.seek(d_off)
            f.write(blobs.chunk_data(chunk, verify=False))


@contextlib.contextmanager
def erofs_mount(bootstrap: Path, blob_data: list[Path]) -> Iterator[Path]:
    """Mount `bootstrap` read-only with the uncompressed blobs as extra devices; always cleaned up."""
    loops: list[str] = []
    mnt = Path(tempfile.mkdtemp(prefix="erofs-"))
    mounted = False
    try:
        for path in [bootstrap, *blob_data]:
            out = subprocess.run(["losetup", "-f", "--show", "-r", str(path)], check=True,
                                 capture_output=True, text=True)
            loops.append(out.stdout.strip())
        opts = ",".join(["ro"] + [f"device={d}" for d in loops[1:]])
        subprocess.run(["mount", "-t", "erofs", "-o", opts, loops[0], str(mnt)], check=True)
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], check=False)
        mnt.rmdir()
