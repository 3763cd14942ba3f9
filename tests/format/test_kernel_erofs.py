"""v6 attributes and contents equal what the Linux EROFS driver shows for the same bootstrap."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import rafs
from rafs.localblob import LocalBlobs, walk
from rafs.toc import inline_bootstrap
from tests.format.images import real_images
from tests.kernel_erofs import erofs_mount, require_kernel_erofs, write_uncompressed_blob


def _kernel_tree(mnt: Path) -> dict[bytes, os.stat_result]:
    out = {b"/": os.lstat(mnt)}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(mnt)):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out[b"/" + os.path.relpath(full, os.fsencode(mnt))] = os.lstat(full)
    return out


@pytest.mark.parametrize("name", ["v6-zstd", "v6-inline"])
def test_reader_agrees_with_kernel_erofs(nydus_fixtures, tmp_path, name):
    require_kernel_erofs()
    path, blob_dir = real_images(nydus_fixtures)[name]
    image = rafs.open_image(path)
    bootstrap = path
    if name == "v6-inline":
        raw = path.read_bytes()
        bootstrap = tmp_path / "bootstrap"
        bootstrap.write_bytes(inline_bootstrap(lambda o, n: raw[o:o + n], len(raw)))
    LocalBlobs(image, str(blob_dir)).close()  # attaches the ci table
    data = tmp_path / "blob.data"
    write_uncompressed_blob(image, str(blob_dir), 0, data)
    ours = dict(walk(image))
    with erofs_mount(bootstrap, [data]) as mnt, LocalBlobs(image, str(blob_dir)) as blobs:
        kernel = _kernel_tree(mnt)
        assert set(kernel) == set(ours)
        for p, st in kernel.items():
            inode = ours[p]
            assert (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_ino,
                    st.st_mtime_ns, st.st_rdev) == (
                inode.mode, inode.uid, inode.gid, inode.size, inode.nlink, inode.ino,
                inode.mtime * 10**9 + inode.mtime_nsec, inode.rdev), p
            full = os.path.join(mnt, p.lstrip(b"/").decode())
            assert {k.encode(): os.getxattr(full, k, follow_symlinks=False)
                    for k in os.listxattr(full, follow_symlinks=False)} == image.xattrs(inode.ino)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    assert f.read() == blobs.read_file(inode.ino), p
            elif stat.S_ISLNK(st.st_mode):
                assert os.readlink(os.fsencode(full)) == image.readlink(inode.ino)
