"""The builder: the source tree on disk is the truth; read it back through the reader and the kernel."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rafs
from rafs.localblob import LocalBlobs, walk
from tests.treeutil import make_source, source_manifest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"


def image_manifest(image: rafs.Image, blob_dir: Path) -> dict[bytes, tuple]:
    out = {}
    with LocalBlobs(image, str(blob_dir)) as blobs:
        for path, i in walk(image):
            content = hashlib.sha256(blobs.read_file(i.ino)).hexdigest() if i.is_reg else None
            size = i.size if i.is_reg or i.is_symlink else None
            nlink = None if i.is_dir else i.nlink
            out[path] = (i.mode, i.uid, i.gid, size, nlink, i.rdev,
                         i.mtime * 10**9 + i.mtime_nsec,
                         image.readlink(i.ino) if i.is_symlink else None, image.xattrs(i.ino),
                         content)
    return out


def build(src: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(IMAGE_TOOL), "create", "--blob-dir", str(out / "blobs"),
                           "--bootstrap", str(out / "bootstrap"), *args, str(src)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("version", ["5", "6"])
@pytest.mark.parametrize("compressor", ["none", "lz4_block", "zstd"])
@pytest.mark.parametrize("digester", ["blake3", "sha256"])
def test_round_trip_every_attribute(tmp_path, version, compressor, digester):
    src = make_source(tmp_path)
    r = build(src, tmp_path / "img", "--fs-version", version, "--compressor", compressor,
              "--digester", digester, "--chunk-size", "0x10000")
    assert r.returncode == 0, r.stderr
    image = rafs.open_image(tmp_path / "img/bootstrap")
    assert (image.compressor, image.digester, image.chunk_size) == (compressor, digester, 0x10000)
    assert image_manifest(image, tmp_path / "img/blobs") == source_manifest(src)
    ver = subprocess.run([str(IMAGE_TOOL), "inspect", "--verify", "--blob-dir",
                          str(tmp_path / "img/blobs"), str(tmp_path / "img/bootstrap")],
                         capture_output=True, text=True)
    assert ver.returncode == 0, ver.stderr
    # the blob is named by its sha256, and identical chunks are stored once
    blob = next((tmp_path / "img/blobs").iterdir())
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    paths = dict(walk(image))
    a = image.file_chunks(paths[b"/data/dup-a.bin"].ino)
    b = image.file_chunks(paths[b"/data/dup-b.bin"].ino)
    assert [c.compressed_offset for c in a] == [c.compressed_offset for c in b]


@pytest.mark.parametrize("version", ["5", "6"])
def test_repeatable_builds_are_byte_identical(tmp_path, version):
    src = make_source(tmp_path)
    for out in ("one", "two"):
        assert build(src, tmp_path / out, "--repeatable", "--fs-version", version).returncode == 0
    assert (tmp_path / "one/bootstrap").read_bytes() == (tmp_path / "two/bootstrap").read_bytes()
    assert not rafs.open_image(tmp_path / "one/bootstrap").explicit_uid_gid


def test_unreadable_source_is_a_clear_error(tmp_path):
    r = build(tmp_path / "missing", tmp_path / "img")
    assert r.returncode == 1 and "missing" in r.stderr
    assert not (tmp_path / "img/bootstrap").exists()


def test_tree_without_file_data_has_no_blob(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    os.symlink("x", src / "l")
    assert build(src, tmp_path / "img").returncode == 0
    image = rafs.open_image(tmp_path / "img/bootstrap")
    assert image.blobs == [] and {p for p, _ in walk(image)} == {b"/", b"/d", b"/l"}


def test_v5_and_v6_encodings_have_identical_contents(tmp_path):
    src = make_source(tmp_path)
    manifests = []
    for version in ("5", "6"):
        out = tmp_path / f"v{version}"
        assert build(src, out, "--fs-version", version).returncode == 0
        manifests.append(image_manifest(rafs.open_image(out / "bootstrap"), out / "blobs"))
    assert manifests[0] == manifests[1]


@pytest.mark.parametrize("compressor", ["none", "zstd"])
def test_v6_output_mounts_with_the_kernel_and_passes_fsck(tmp_path, compressor):
    from tests.kernel_erofs import erofs_mount, require_kernel_erofs, write_uncompressed_blob

    require_kernel_erofs()
    src = make_source(tmp_path)
    out = tmp_path / "img"
    assert build(src, out, "--compressor", compressor, "--chunk-size", "0x10000").returncode == 0
    image = rafs.open_image(out / "bootstrap")
    LocalBlobs(image, str(out / "blobs")).close()  # attaches the ci table
    data = tmp_path / "blob.data"
    write_uncompressed_blob(image, str(out / "blobs"), 0, data)
    if shutil.which("fsck.erofs"):
        r = subprocess.run(["fsck.erofs", f"--device={data}", str(out / "bootstrap")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    with erofs_mount(out / "bootstrap", [data]) as mnt:
        kernel = source_manifest(mnt)
    want = source_manifest(src)
    # the kernel shows the stored root mtime (0) and the same everything else
    assert kernel == want


@pytest.mark.parametrize("version", ["5", "6"])
def test_prefetch_list_becomes_the_prefetch_table(tmp_path, version):
    src = make_source(tmp_path)
    out = tmp_path / "img"
    r = subprocess.run([str(IMAGE_TOOL), "create", "--fs-version", version, "--prefetch-policy",
                        "fs", "--blob-dir", str(out / "blobs"), "--bootstrap",
                        str(out / "bootstrap"), "--output-json", str(out / "out.json"), str(src)],
                       input="/etc\n/data/text-1m.txt\n", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    image = rafs.open_image(out / "bootstrap")
    paths = dict(walk(image))
    assert image.prefetch == [paths[b"/etc"].ino, paths[b"/data/text-1m.txt"].ino]
    facts = json.loads((out / "out.json").read_text())
    assert facts["blobs"] == [b.blob_id for b in image.blobs] and facts["chunk_count"] > 0


def test_v6_blob_carries_ci_table_digests_and_toc(tmp_path):
    from rafs.toc import extract_entry, read_toc

    src = make_source(tmp_path)
    out = tmp_path / "img"
    assert build(src, out, "--chunk-size", "0x10000").returncode == 0
    blob = next((out / "blobs").iterdir()).read_bytes()

    def read(o, n):
        return blob[o:o + n]

    entries = {e.name: e for e in read_toc(read, len(blob))}
    assert set(entries) == {b"image.blob", b"blob.meta", b"blob.meta.header", b"blob.digest"}
    for name, e in entries.items():
        if name != b"image.blob":
            extract_entry(e, read, len(blob))  # checks each entry's sha256
    data = entries[b"image.blob"]
    assert hashlib.sha256(blob[:data.compressed_size + 512]).digest() == data.digest
    image = rafs.open_image(out / "bootstrap")
    info = image.blobs[0]
    assert info.toc_size == 128 * 4 + 512
    assert hashlib.sha256(blob[-info.toc_size:]).digest() == info.toc_digest
    digests = extract_entry(entries[b"blob.digest"], read, len(blob))
    chunks = {c.chunk_index: c.digest for _p, i in walk(image) if i.is_reg
              for c in image.file_chunks(i.ino)}
    assert {k: digests[32 * k:32 * k + 32] for k in chunks} == chunks


@pytest.mark.parametrize("version", ["5", "6"])
def test_readdir_resumes_at_any_position_of_a_many_block_directory(tmp_path, version):
    """The kernel lists a big directory in many calls, each resuming at the last position it took."""
    src = tmp_path / "src"
    (src / "big").mkdir(parents=True)
    for i in range(3000):  # ~30 directory blocks in v6
        (src / "big" / f"entry-with-a-longish-name-{i:05d}").touch()
    assert build(src, tmp_path / "img", "--fs-version", version).returncode == 0
    image = rafs.open_image(tmp_path / "img/bootstrap")
    big = image.lookup(image.root_ino, b"big")
    full = [(name, inode.ino, pos) for name, inode, pos in image.readdir(big.ino)]
    assert sorted(n for n, _, _ in full) == sorted(p.name.encode() for p in (src / "big").iterdir())
    for i in [*range(0, 40), *range(40, len(full), 97), len(full) - 1]:
        resumed = [(name, inode.ino, pos) for name, inode, pos in image.readdir(big.ino, full[i][2])]
        assert resumed == full[i + 1:], i
    # resuming backwards (a rewound directory stream) after the positions are known
    assert [n for n, _, _ in image.readdir(big.ino, full[5][2])][:3] == [n for n, _, _ in full[6:9]]
