"""tar-rafs: OCI layer tars (files or stdin) into images; tarfile's own reading is the truth."""

from __future__ import annotations

import io
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import rafs
from rafs.localblob import LocalBlobs, walk

IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"


def create(out: Path, source: str, *args: str, stdin: bytes | None = None):
    return subprocess.run([str(IMAGE_TOOL), "create", "--type", "tar-rafs", "--blob-dir",
                           str(out / "blobs"), "--bootstrap", str(out / "bootstrap"), *args, source],
                          input=stdin, capture_output=True, timeout=120)


def tar_truth(data: bytes) -> dict[bytes, tuple]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        for m in members:
            path = b"/" + m.name.strip("/").encode()
            if m.islnk():
                src = tar.getmember(m.linkname)
                out[path] = ("file", src.mode, tar.extractfile(src).read(), None)
            elif m.isfile():
                out[path] = ("file", m.mode, tar.extractfile(m).read(), None)
            elif m.isdir():
                out[path] = ("dir", m.mode, None, None)
            elif m.issym():
                out[path] = ("symlink", m.mode, None, m.linkname.encode())
    return out


@pytest.mark.parametrize("version", ["5", "6"])
def test_upstream_all_entry_type_tar(nydus_fixtures, tmp_path, version):
    src = nydus_fixtures / "tar/all-entry-type.tar"
    r = create(tmp_path, str(src), "--fs-version", version)
    assert r.returncode == 0, r.stderr
    image = rafs.open_image(tmp_path / "bootstrap")
    got = {}
    with LocalBlobs(image, str(tmp_path / "blobs")) as blobs:
        for path, i in walk(image):
            if path == b"/":
                continue
            kind = "dir" if i.is_dir else "symlink" if i.is_symlink else "file"
            got[path] = (kind, stat.S_IMODE(i.mode), blobs.read_file(i.ino) if i.is_reg else None,
                         image.readlink(i.ino) if i.is_symlink else None)
    assert got == tar_truth(src.read_bytes())
    paths = dict(walk(image))
    links = [paths[p] for p in paths if p.endswith(b".txt") and paths[p].is_reg]
    assert len({i.ino for i in links}) == 1 and {i.nlink for i in links} == {4}


def test_empty_tar_from_stdin(nydus_fixtures, tmp_path):
    r = create(tmp_path, "-", stdin=(nydus_fixtures / "tar/empty.tar").read_bytes())
    assert r.returncode == 0, r.stderr
    image = rafs.open_image(tmp_path / "bootstrap")
    assert [p for p, _ in walk(image)] == [b"/"] and image.blobs == []


def _layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("etc/os-release", b"ID=test\n"), ("etc/.wh.passwd", b""),
                           ("var/cache/.wh..wh..opq", b""), ("var/cache/new", b"new\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            if name == "etc/os-release":
                info.pax_headers = {"SCHILY.xattr.user.origin": "layer"}
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_oci_whiteouts_kept_by_default(tmp_path):
    assert create(tmp_path, "-", stdin=_layer()).returncode == 0
    paths = dict(walk(rafs.open_image(tmp_path / "bootstrap")))
    assert b"/etc/.wh.passwd" in paths and b"/var/cache/.wh..wh..opq" in paths


def test_whiteouts_for_overlayfs(tmp_path):
    r = create(tmp_path, "-", "--whiteout-spec", "overlayfs", stdin=_layer())
    assert r.returncode == 0, r.stderr
    image = rafs.open_image(tmp_path / "bootstrap")
    paths = dict(walk(image))
    wh = paths[b"/etc/passwd"]
    assert stat.S_ISCHR(wh.mode) and wh.rdev == 0  # overlayfs whiteout: char device 0/0
    assert image.xattrs(paths[b"/var/cache"].ino) == {b"trusted.overlay.opaque": b"y"}
    assert b"/var/cache/.wh..wh..opq" not in paths
    assert image.xattrs(paths[b"/etc/os-release"].ino) == {b"user.origin": b"layer"}


def test_hostile_tar_names_are_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../escape")
        tar.addfile(info, io.BytesIO(b""))
    r = create(tmp_path, "-", stdin=buf.getvalue())
    assert r.returncode == 1 and b"escapes the root" in r.stderr
    assert not (tmp_path / "bootstrap").exists()


@pytest.mark.parametrize("mtime", ["nan", "inf", "-inf", "9223372036854775808", "1e30"])
def test_an_mtime_no_inode_can_hold_is_refused_by_name(tmp_path, mtime):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        m = tarfile.TarInfo("when")
        m.pax_headers = {"mtime": mtime}  # what a pax header may say
        tar.addfile(m, io.BytesIO(b""))
    (tmp_path / "t.tar").write_bytes(buf.getvalue())
    for version in ("5", "6"):
        r = create(tmp_path / version, str(tmp_path / "t.tar"), "--fs-version", version)
        assert r.returncode != 0 and b"Traceback" not in r.stderr
        assert b"'when' has an mtime no inode can hold" in r.stderr, r.stderr
