"""The reader on real images written by upstream nydus-image."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat

import pytest

import rafs
from rafs.localblob import LocalBlobs, walk
from tests.format.images import INLINE_BLOB, manifest, real_images


def _tree_json_paths(node: dict, prefix: str, out: dict) -> None:
    for child in node.get("contents", []):
        path = f"{prefix}/{child['name']}"
        out[path] = (child["type"], child.get("target"))
        if child["type"] == "directory":
            _tree_json_paths(child, path, out)


def _upstream_listing(nydus_fixtures):
    """tree.json is upstream's `tree -J` output followed by an md5sum list of the files."""
    text = (nydus_fixtures / "v5-sha256-none/tree.json").read_text()
    tree, end = json.JSONDecoder().raw_decode(text)
    md5 = {}
    for line in text[end:].splitlines():
        if line.strip():
            digest, path = line.split(None, 1)
            md5[path.strip()] = digest
    return tree, md5


def test_v5_contents_match_upstream_md5_list(nydus_fixtures):
    _tree, md5 = _upstream_listing(nydus_fixtures)
    assert len(md5) >= 20
    image = rafs.open_image(nydus_fixtures / "v5-sha256-none/bootstrap")
    paths = {p.decode(): i for p, i in walk(image)}
    with LocalBlobs(image, str(nydus_fixtures / "v5-sha256-none/blobs")) as blobs:
        got = {p: hashlib.md5(blobs.read_file(paths[p].ino)).hexdigest() for p in md5}
    assert got == md5


def test_v5_tree_equals_upstream_listing(nydus_fixtures):
    tree, _md5 = _upstream_listing(nydus_fixtures)
    want: dict = {}
    _tree_json_paths(tree[0], "", want)
    image = rafs.open_image(nydus_fixtures / "v5-sha256-none/bootstrap")
    kinds = {stat.S_IFDIR: "directory", stat.S_IFREG: "file", stat.S_IFLNK: "link"}
    got = {}
    for path, inode in walk(image):
        if path == b"/":
            continue
        target = image.readlink(inode.ino).decode() if inode.is_symlink else None
        got[path.decode()] = (kinds[stat.S_IFMT(inode.mode)], target)
    assert got == want


def test_v5_attributes_hardlinks_and_holes(nydus_fixtures):
    image = rafs.open_image(nydus_fixtures / "v5-sha256-none/bootstrap")
    assert (image.version, image.compressor, image.digester) == (5, "none", "sha256")
    paths = {p: i for p, i in walk(image)}
    links = [paths[p] for p in (b"/hardlink-test/foo", b"/hardlink-test/test.sh",
                                b"/normal-file-test/test.sh")]
    assert len({i.ino for i in links}) == 1 and all(i.nlink == 3 for i in links)
    assert sum(1 for i in paths.values() if i.is_reg) == 23
    # without EXPLICIT_UID_GID the daemon's own ids are reported
    assert not image.explicit_uid_gid
    assert all(i.uid == os.geteuid() and i.gid == os.getegid() for i in paths.values())
    with LocalBlobs(image, str(nydus_fixtures / "v5-sha256-none/blobs")) as blobs:
        head = blobs.read_file(paths[b"/normal-file-test/holefiles/head-hole-1"].ino)
    assert len(head) == 2097159
    assert head[:1 << 20] == bytes(1 << 20)  # the head hole reads as zeros
    assert head[-7:] != bytes(7)


@pytest.mark.parametrize("name", ["v5-sha256-none", "v6-zstd", "v6-inline"])
def test_every_chunk_verifies_and_reads_back(nydus_fixtures, name):
    path, blob_dir = real_images(nydus_fixtures)[name]
    image = rafs.open_image(path)
    with LocalBlobs(image, str(blob_dir)) as blobs:
        nchunks = 0
        for _p, inode in walk(image):
            if inode.is_reg:
                for chunk in image.file_chunks(inode.ino):
                    blobs.chunk_data(chunk, verify=True)
                    nchunks += 1
                data = blobs.read_file(inode.ino)
                assert len(data) == inode.size
                # a read of any sub-range equals the same slice of the whole file
                mid = inode.size // 3
                assert blobs.read_file(inode.ino, mid, 4099) == data[mid:mid + 4099]
    assert nchunks > 0


def test_v5_content_matches_md5_of_hardlinked_copies(nydus_fixtures):
    image = rafs.open_image(nydus_fixtures / "v5-sha256-none/bootstrap")
    m = manifest(image, nydus_fixtures / "v5-sha256-none/blobs")
    assert m[b"/hardlink-test/foo"][-1] == m[b"/normal-file-test/test.sh"][-1]
    script = m[b"/normal-file-test/test.sh"]
    assert script[3] == 944


def test_v6_chunk_table_and_ci_table_agree(nydus_fixtures):
    path = nydus_fixtures / "v6-zstd/bootstrap"
    plain = rafs.open_image(path)
    with_ci = rafs.open_image(path)
    blobs = LocalBlobs(with_ci, str(nydus_fixtures / "v6-zstd/blobs"))
    assert with_ci.has_ci_table(0) and not plain.has_ci_table(0)
    for _p, inode in walk(plain):
        if inode.is_reg:
            assert plain.file_chunks(inode.ino) == with_ci.file_chunks(inode.ino)
    # neighbours by chunk index (read widening) need no ci table: the chunk table names them too
    count = with_ci.blobs[0].chunk_count
    assert count > 1
    for i in [-1, *range(count + 2)]:
        assert plain.chunk_by_index(0, i) == with_ci.chunk_by_index(0, i), i
    assert plain.chunk_by_index(0, count) is None and plain.chunk_by_index(1, 0) is None
    blobs.close()


def test_v6_blob_toc_entries_verify(nydus_fixtures):
    from rafs.toc import extract_entry, read_toc

    blob = (nydus_fixtures / "v6-zstd/blobs").iterdir().__next__().read_bytes()
    entries = read_toc(lambda o, n: blob[o:o + n], len(blob))
    names = {e.name for e in entries}
    assert {b"blob.meta", b"blob.digest"} <= names
    for e in entries:
        if e.name != b"image.blob":
            extract_entry(e, lambda o, n: blob[o:o + n], len(blob))  # sha256 checked inside
    digests = extract_entry(next(e for e in entries if e.name == b"blob.digest"),
                            lambda o, n: blob[o:o + n], len(blob))
    image = rafs.open_image(nydus_fixtures / "v6-zstd/bootstrap")
    chunks = {c.chunk_index: c.digest for _p, i in walk(image) if i.is_reg
              for c in image.file_chunks(i.ino)}
    assert {k: digests[32 * k:32 * k + 32] for k in chunks} == chunks


def test_inline_bootstrap_takes_the_blob_file_name(nydus_fixtures, tmp_path):
    src = nydus_fixtures / "v6-blob-with-inline-bootstrap/blobs" / INLINE_BLOB
    image = rafs.open_image(src)
    assert [b.blob_id for b in image.blobs] == [INLINE_BLOB]
    # renamed copies take their new name: the id inside the bootstrap is a placeholder
    other = "ab" * 32
    shutil.copy(src, tmp_path / other)
    assert rafs.open_image(tmp_path / other).blobs[0].blob_id == other


def test_legacy_layout_rejected_with_clear_error(nydus_fixtures):
    with pytest.raises(rafs.UnsupportedImageError, match="legacy pre-release v5 inode layout"):
        rafs.open_image(nydus_fixtures / "v5-metadata-only/bootstrap")


def test_sha256_blob_id_is_the_blob_checksum(nydus_fixtures):
    blob_dir = nydus_fixtures / "v5-sha256-none/blobs"
    for f in blob_dir.iterdir():
        assert hashlib.sha256(f.read_bytes()).hexdigest() == f.name


def test_open_is_lazy(nydus_fixtures):
    # opening decodes only the root record; inodes are decoded when first touched
    image = rafs.open_image(nydus_fixtures / "v5-sha256-none/bootstrap")
    assert len(image._recs) == 1
    image.lookup(image.root_ino, b"symlink-test")
    assert 1 < len(image._recs) < 5
