"""Real FUSE mounts of the real upstream images: every path, attribute, xattr and content."""

from __future__ import annotations

import errno
import hashlib
import os
import stat

import pytest

import rafs
from rafs.localblob import LocalBlobs, walk
from rafs.model import SB_HAS_XATTR
from tests.format.images import real_images
from tests.mountutil import PYNYDUSD, Daemon, require_fuse


def _expected(image: rafs.Image, blob_dir):
    with LocalBlobs(image, str(blob_dir)) as blobs:
        return {p: (i, hashlib.sha256(blobs.read_file(i.ino)).hexdigest() if i.is_reg else None,
                    image.readlink(i.ino) if i.is_symlink else None, image.xattrs(i.ino))
                for p, i in walk(image)}


@pytest.mark.parametrize("name", ["v5-sha256-none", "v6-zstd", "v6-inline"])
def test_mount_shows_the_image(nydus_fixtures, tmp_path, name):
    require_fuse()
    path, blob_dir = real_images(nydus_fixtures)[name]
    image = rafs.open_image(path)
    want = _expected(image, blob_dir)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    d = Daemon([str(PYNYDUSD), "--bootstrap", str(path), "--backend", str(blob_dir),
                "--cache-dir", str(tmp_path / "cache"), "--no-prefetch", str(mnt)], mnt)
    try:
        seen = {b"/"}
        root = os.lstat(mnt)
        assert stat.S_IMODE(root.st_mode) == 0o755  # nydusd forces the root to 0755
        for dirpath, dirs, files in os.walk(os.fsencode(mnt)):
            for n in dirs + files:
                full = os.path.join(dirpath, n)
                rel = b"/" + os.path.relpath(full, os.fsencode(mnt))
                seen.add(rel)
                inode, digest, link, xattrs = want[rel]
                st = os.lstat(full)
                assert (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_rdev) == (
                    inode.mode, inode.uid, inode.gid, inode.size, inode.nlink, inode.rdev), rel
                if inode.mtime:
                    assert st.st_mtime_ns == inode.mtime * 10**9 + inode.mtime_nsec
                if image.flags & SB_HAS_XATTR:
                    assert {k.encode(): os.getxattr(full, k, follow_symlinks=False)
                            for k in os.listxattr(full, follow_symlinks=False)} == xattrs
                else:  # none in the image: ENOSYS, as nydusd answers (the kernel remembers it)
                    assert xattrs == {}
                    with pytest.raises(OSError) as e:
                        os.listxattr(full, follow_symlinks=False)
                    assert e.value.errno == errno.EOPNOTSUPP
                if digest:
                    with open(full, "rb") as f:
                        assert hashlib.sha256(f.read()).hexdigest() == digest, rel
                if link:
                    assert os.readlink(full) == link
        assert seen == set(want)
        # hardlinks are one inode through the mount too
        if name == "v5-sha256-none":
            a, b = os.lstat(mnt / "hardlink-test/foo"), os.lstat(mnt / "normal-file-test/test.sh")
            assert a.st_ino == b.st_ino and a.st_nlink == 3
        d.assert_clean_log()
    finally:
        d.stop()
    assert not os.path.ismount(mnt)


def test_errno_values(nydus_fixtures, tmp_path):
    require_fuse()
    path, blob_dir = real_images(nydus_fixtures)["v5-sha256-none"]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    d = Daemon([str(PYNYDUSD), "--bootstrap", str(path), "--backend", str(blob_dir),
                "--cache-dir", str(tmp_path / "cache"), "--no-prefetch", str(mnt)], mnt)
    try:
        with pytest.raises(FileNotFoundError):
            os.lstat(mnt / "no-such-file")
        for op in (lambda: open(mnt / "new", "w"), lambda: os.mkdir(mnt / "d"),
                   lambda: os.unlink(mnt / "normal-file-test/test.sh"),
                   lambda: open(mnt / "normal-file-test/test.sh", "a")):
            with pytest.raises(OSError) as e:
                op()
            assert e.value.errno == errno.EROFS
        with pytest.raises(OSError) as e:  # an image without xattrs (ENODATA: test_mount_built)
            os.getxattr(mnt / "normal-file-test/test.sh", "user.nothing")
        assert e.value.errno == errno.EOPNOTSUPP
        st = os.statvfs(mnt)
        assert st.f_namemax == 255 and st.f_files == image_inodes(path)
    finally:
        d.stop()


def image_inodes(path) -> int:
    return rafs.open_image(path).inode_count


def test_missing_blob_gives_eio_and_daemon_keeps_serving(nydus_fixtures, tmp_path):
    require_fuse()
    path, _blob_dir = real_images(nydus_fixtures)["v5-sha256-none"]
    empty = tmp_path / "blobs"
    empty.mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    d = Daemon([str(PYNYDUSD), "--bootstrap", str(path), "--backend", str(empty),
                "--cache-dir", str(tmp_path / "cache"), "--no-prefetch", str(mnt)], mnt)
    try:
        with pytest.raises(OSError) as e:
            (mnt / "normal-file-test/test.sh").read_bytes()
        assert e.value.errno == errno.EIO
        assert sorted(os.listdir(mnt)) == ["hardlink-test", "normal-file-test", "symlink-test"]
        assert d.proc.poll() is None
    finally:
        d.stop()
