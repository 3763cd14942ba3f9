"""RAFS v6 with the options nydusd refuses for v6 (README "Where we differ"): no disk cache,
`digest_validate` and `mode: cached` all mount and serve the right bytes, and `digest_validate`
really checks v6 chunks read from a local blob directory."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from tests.mountutil import (
    PYNYDUSD,
    Daemon,
    files_of,
    read_every_file_through_a_mount,
    require_fuse,
)
from tests.treeutil import build_image, make_source


def _config(path: Path, blobs: Path, **top) -> Path:
    path.write_text(json.dumps({"device": {"backend": {"type": "localfs", "config": {
        "dir": str(blobs)}}, "cache": {"type": "dummycache"}}, "mode": "direct", **top}))
    return path


@pytest.fixture(scope="module")
def plain_v6(tmp_path_factory):
    """The sample tree as RAFS v6 with uncompressed chunks (a flipped byte stays a wrong byte)."""
    tmp = tmp_path_factory.mktemp("plain-v6")
    src = make_source(tmp)
    build_image(src, tmp, "--fs-version", "6", "--compressor", "none")
    return tmp, src


def test_v6_without_cache_with_validation_and_cached_mode_reads_right(plain_v6, tmp_path):
    require_fuse()
    img, src = plain_v6
    cfg = _config(tmp_path / "c.json", img / "blobs", mode="cached", digest_validate=True)
    read_every_file_through_a_mount(img, src, cfg, tmp_path)


def _reads(mnt: Path, files: dict[str, bytes]) -> dict[str, str]:
    """Per file: "right", "wrong" or "EIO"."""
    out = {}
    for rel, data in files.items():
        try:
            out[rel] = "right" if (mnt / rel).read_bytes() == data else "wrong"
        except OSError as e:
            assert e.errno == errno.EIO, e
            out[rel] = "EIO"
    return out


def test_digest_validate_checks_v6_chunks_from_a_local_blob_directory(plain_v6, tmp_path):
    require_fuse()
    img, src = plain_v6
    blobs = tmp_path / "blobs"
    shutil.copytree(img / "blobs", blobs)
    blob = next(blobs.iterdir())
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF  # inside the first chunk
    blob.write_bytes(bytes(data))
    files = files_of(src)
    seen = {}
    for validate in (False, True):
        mnt = tmp_path / f"mnt-{validate}"
        mnt.mkdir()
        cfg = _config(tmp_path / f"c-{validate}.json", blobs, digest_validate=validate)
        d = Daemon([str(PYNYDUSD), "--bootstrap", str(img / "bootstrap"), "--config", str(cfg),
                    str(mnt)], mnt)
        try:
            seen[validate] = _reads(mnt, files)
        finally:
            d.stop()
    bad = {rel for rel, how in seen[False].items() if how != "right"}
    assert bad and all(seen[False][rel] == "wrong" for rel in bad)  # unchecked: wrong bytes
    assert {rel for rel, how in seen[True].items() if how != "right"} == bad
    assert all(seen[True][rel] == "EIO" for rel in bad)  # checked: an error, never wrong bytes
