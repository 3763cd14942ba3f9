"""Builder details a reader relies on: the v6 `..` entry wherever the name order puts it (a
daemon that took over a mount finds parents there), v5's hard-link flag; and what a failed build
leaves in --blob-dir."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import rafs
from rafs.errors import RafsError
from rafs.v5 import I_HARDLINK
from rafs.writer.tree import scan
from rafs.writer.v5 import V5Writer
from rafs.writer.v6 import V6Writer
from tests.treeutil import build_image


def test_v6_parent_is_found_from_the_dotdot_entry_in_any_block(tmp_path):
    src = tmp_path / "src"
    (src / "d/sub").mkdir(parents=True)
    for i in range(40):  # names sorting before ".." push it out of the first block
        (src / "d" / f"-{i:03d}{'x' * 120}").write_bytes(b"")
    img = tmp_path / "img"
    build_image(src, img, "--fs-version", "6")
    seen = rafs.open_image(img / "bootstrap")
    d = seen.lookup(seen.root_ino, b"d").ino
    sub = seen.lookup(d, b"sub").ino
    assert (seen.parent(d), seen.parent(sub), seen.parent(seen.root_ino)) == (
        seen.root_ino, d, seen.root_ino)
    fresh = rafs.open_image(img / "bootstrap")  # no lookups: only the on-disk entries
    assert (fresh.parent(sub), fresh.parent(d)) == (d, fresh.root_ino)


def test_v5_marks_hard_links_of_any_kind(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.link(src / "f", src / "f2")
    os.symlink("target", src / "s")
    os.link(src / "s", src / "s2", follow_symlinks=False)
    (src / "lone").write_bytes(b"y")
    img = tmp_path / "img"
    build_image(src, img, "--fs-version", "5")
    image = rafs.open_image(img / "bootstrap")
    flags = {}
    for name in (b"f", b"f2", b"s", b"s2", b"lone"):
        ino = image.lookup(image.root_ino, name).ino
        flags[name] = bool(image._inode_record(ino).flags & I_HARDLINK)
    assert flags == {b"f": True, b"f2": True, b"s": True, b"s2": True, b"lone": False}
    assert image.lookup(image.root_ino, b"s").ino == image.lookup(image.root_ino, b"s2").ino


def _build(writer, src: Path, blobs: Path, body=None) -> str:
    """Build src as create does: the blob goes in place while `body` (the bootstrap write) runs."""
    w = writer(str(blobs), "lz4_block", "blake3")
    try:
        _bootstrap, blob_id = w.build(scan(str(src)))
        with w.blob.published():
            if body is not None:
                body()
    finally:
        w.blob.abort()
    return blob_id


def _boom():
    raise RafsError("the bootstrap step failed")


@pytest.mark.parametrize("writer", [V5Writer, V6Writer])
def test_a_build_failing_after_its_blob_removes_that_blob_only(tmp_path, monkeypatch, writer):
    """A blob is named by its content: one already in --blob-dir (an earlier build of the same
    data) may serve other images and stays; one this build created goes with the failure."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"some data" * 1000)
    blobs = tmp_path / "blobs"
    monkeypatch.setattr(writer, "_assemble", lambda *a, **k: _boom())
    with pytest.raises(RafsError, match="bootstrap step failed"):
        _build(writer, src, blobs)
    assert os.listdir(blobs) == []  # nothing left behind, not even the temporary file
    monkeypatch.undo()
    with pytest.raises(RafsError, match="bootstrap step failed"):
        _build(writer, src, blobs, _boom)  # sealed and put in place, then the bootstrap fails
    assert os.listdir(blobs) == []
    blob_id = _build(writer, src, blobs)
    assert os.listdir(blobs) == [blob_id]
    with pytest.raises(RafsError):  # the earlier build's blob stays when the bootstrap fails
        _build(writer, src, blobs, _boom)
    assert os.listdir(blobs) == [blob_id]
    monkeypatch.setattr(writer, "_assemble", lambda *a, **k: _boom())
    with pytest.raises(RafsError):  # and when the build fails before its blob is put in place
        _build(writer, src, blobs)
    assert os.listdir(blobs) == [blob_id]


def test_a_failing_build_never_takes_a_blob_from_a_build_of_the_same_data(tmp_path):
    """Two builds of the same data into one --blob-dir: the first puts the blob in place, then
    fails writing its bootstrap; the second, finishing meanwhile, must still find its blob (it
    waits for the first to decide, then puts the blob in place itself)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"shared data" * 5000)
    blobs = tmp_path / "blobs"
    in_body, second_done = threading.Event(), threading.Event()
    result: dict[str, object] = {}

    def second():
        try:
            result["id"] = _build(V6Writer, src, blobs)
            result["there"] = os.listdir(blobs)  # right after its bootstrap was written
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e
        second_done.set()

    def first_body():
        in_body.set()
        threading.Thread(target=second).start()
        # the second build must not get past putting its blob in place while this one may fail
        assert not second_done.wait(0.5)
        _boom()

    with pytest.raises(RafsError, match="bootstrap step failed"):
        _build(V6Writer, src, blobs, first_body)
    assert in_body.is_set() and second_done.wait(30)
    assert "error" not in result
    assert result["there"] == [result["id"]] and os.listdir(blobs) == [result["id"]]


def test_a_bootstrap_that_cannot_be_written_takes_the_new_blob_with_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data" * 1000)
    (tmp_path / "notadir").write_bytes(b"")
    r = subprocess.run([str(Path(sys.executable).parent / "pynydus-image"), "create",
                        "--blob-dir", str(tmp_path / "blobs"), "--bootstrap",
                        str(tmp_path / "notadir/bootstrap"), str(src)], capture_output=True)
    assert r.returncode == 1 and b"pynydus-image:" in r.stderr and b"Traceback" not in r.stderr
    assert os.listdir(tmp_path / "blobs") == []
