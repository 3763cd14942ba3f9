"""What `ls -a`, `stat` and `statfs` show through a real mount, against the source tree (v5 and
v6, built by pynydus-image): `.` and `..` in listings, mtimes before 1970 and with nanoseconds
near the next second, ENAMETOOLONG, inode counts with hard links, hard-linked symlinks from a
tar. (Found by a differential audit against the kernel's erofs and squashfs readers.)"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.mountutil import PYNYDUSD, Daemon, require_fuse
from tests.treeutil import build_image

# (name, mtime in ns): before 1970 with a fraction (floor: -1 s + 0.75 s), a second's last
# nanosecond (a float rounds it up to the next second), half a second after the epoch (stored
# seconds 0: nydusd shows the mount time for those)
TIMES = [("old", -(10 * 365 * 86400) * 10**9 - 250_000_000), ("late", 1_700_000_000_999_999_999),
         ("sixties", -252_460_800 * 10**9)]
EPOCH_HALF = 500_000_000


def _tree(src: Path) -> None:
    (src / "d/e").mkdir(parents=True)
    (src / "empty").mkdir()
    for i in range(300):  # more than one readdir reply
        (src / "d" / f"entry-{i:04d}-{'x' * 40}").write_bytes(b"%d" % i)
    (src / "f").write_bytes(b"data")
    os.link(src / "f", src / "d/f-link")
    os.link(src / "f", src / "f-link2")
    for name, ns in [*TIMES, ("epoch-half", EPOCH_HALF)]:
        (src / name).write_bytes(name.encode())
        os.utime(src / name, ns=(ns, ns))


def _mount(img: Path, tmp_path: Path, version: str) -> tuple[Daemon, Path]:
    mnt = tmp_path / f"mnt{version}"
    mnt.mkdir()
    return Daemon([str(PYNYDUSD), "--bootstrap", str(img / "bootstrap"), "--backend",
                   str(img / "blobs"), "--no-prefetch", str(mnt)], mnt), mnt


def _ls_a(path: Path) -> list[tuple[int, str]]:
    """(inode, name) of every entry `ls -a` reads with getdents, in its order (unsorted)."""
    out = subprocess.run(["ls", "-1aiU", str(path)], capture_output=True, text=True, check=True)
    return [(int(line.split(None, 1)[0]), line.split(None, 1)[1]) for line in out.stdout.splitlines()]


@pytest.mark.parametrize("version", ["5", "6"])
@pytest.mark.timeout(120)
def test_listings_times_names_and_counts_match_the_source(tmp_path, version):
    require_fuse()
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    img = tmp_path / f"img{version}"
    build_image(src, img, "--fs-version", version)
    d, mnt = _mount(img, tmp_path, version)
    try:
        # `.` and `..` come first, with the inodes of the directory and of its parent
        for rel in ("d", "d/e", "empty", ""):
            entries = _ls_a(mnt / rel)
            assert entries[:2] == [(os.stat(mnt / rel).st_ino, "."),
                                   (os.stat(mnt / rel / "..").st_ino, "..")], rel
            names = sorted(n for _i, n in entries[2:])
            assert names == sorted(os.listdir(src / rel)), rel
        assert [n for _i, n in _ls_a(mnt / "empty")] == [".", ".."]
        assert len(_ls_a(mnt / "d")) == 300 + 2 + 2  # entries, e, f-link, the two dots
        # mtimes exactly as the source has them, before 1970 and at a second's last nanosecond
        for name, ns in TIMES:
            assert os.lstat(mnt / name).st_mtime_ns == ns == os.lstat(src / name).st_mtime_ns, name
        assert abs(os.lstat(mnt / "epoch-half").st_mtime - time.time()) < 60  # nydusd's rule
        # a name longer than statfs's limit: ENAMETOOLONG, as from any local filesystem
        with pytest.raises(OSError) as e:
            os.stat(mnt / ("x" * 256))
        assert e.value.errno == errno.ENAMETOOLONG
        assert os.statvfs(mnt).f_namemax == 255
        os.stat(mnt / "f")  # (and a name of 255 bytes is looked up as usual)
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / ("x" * 255))
        # statfs counts inodes, not names: three names of f are one inode
        inodes = {os.lstat(os.path.join(dp, n)).st_ino for dp, ds, fs in os.walk(src)
                  for n in ds + fs} | {os.lstat(src).st_ino}
        assert os.statvfs(mnt).f_files == len(inodes)
        d.assert_clean_log()
    finally:
        d.stop()


@pytest.mark.parametrize("version", ["5", "6"])
@pytest.mark.timeout(120)
def test_a_hard_linked_symlink_in_a_tar_is_one_symlink_under_two_names(tmp_path, version):
    require_fuse()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, target in (("s", tarfile.SYMTYPE, "../t"), ("s2", tarfile.LNKTYPE, "s"),
                                   ("old", tarfile.REGTYPE, "")):
            m = tarfile.TarInfo(name)
            m.type, m.linkname, m.mtime = kind, target, -86400.5 if name == "old" else 1000
            tar.addfile(m, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    (tmp_path / "layer.tar").write_bytes(buf.getvalue())
    img = tmp_path / f"img{version}"
    r = subprocess.run([str(PYNYDUSD.parent / "pynydus-image"), "create", "--type", "tar-rafs",
                        "--fs-version", version, "--blob-dir", str(img / "blobs"), "--bootstrap",
                        str(img / "bootstrap"), str(tmp_path / "layer.tar")], capture_output=True)
    assert r.returncode == 0, r.stderr
    (img / "blobs").mkdir(exist_ok=True)
    d, mnt = _mount(img, tmp_path, version)
    try:
        assert os.readlink(mnt / "s") == os.readlink(mnt / "s2") == "../t"
        a, b = os.lstat(mnt / "s"), os.lstat(mnt / "s2")
        assert a.st_ino == b.st_ino and a.st_nlink == 2
        assert os.lstat(mnt / "old").st_mtime_ns == -86401 * 10**9  # whole seconds, floored
    finally:
        d.stop()
