"""`pynydus-image inspect` as a user runs it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import rafs
from rafs.localblob import LocalBlobs, walk

BIN = Path(sys.executable).parent / "pynydus-image"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), "inspect", *args], capture_output=True, text=True, timeout=60)


def test_ls_style_tree(nydus_fixtures):
    out = run(str(nydus_fixtures / "v5-sha256-none/bootstrap"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 54  # 53 paths + the root
    assert any(line.endswith("/symlink-test/test.sh -> ../normal-file-test/test.sh") for line in lines)
    assert any(line.startswith("-rwxrwxr-x   3") and line.endswith("/hardlink-test/foo") for line in lines)


def test_json_manifest_with_content_digests(nydus_fixtures):
    boot, blobs_dir = nydus_fixtures / "v6-zstd/bootstrap", nydus_fixtures / "v6-zstd/blobs"
    out = run("--json", "--blob-dir", str(blobs_dir), str(boot))
    assert out.returncode == 0, out.stderr
    manifest = {e["path"]: e for e in json.loads(out.stdout)}
    image = rafs.open_image(boot)
    with LocalBlobs(image, str(blobs_dir)) as blobs:
        for path, inode in walk(image):
            e = manifest[path.decode()]
            assert (e["mode"] | (inode.mode & ~0o7777), e["size"], e["nlink"]) == (
                inode.mode, inode.size, inode.nlink)
            if inode.is_reg:
                assert e["sha256"] == hashlib.sha256(blobs.read_file(inode.ino)).hexdigest()


def test_verify_passes_then_fails_on_a_flipped_byte(nydus_fixtures, tmp_path):
    boot = nydus_fixtures / "v5-sha256-none/bootstrap"
    ok = run("--verify", "--blob-dir", str(nydus_fixtures / "v5-sha256-none/blobs"), str(boot))
    assert ok.returncode == 0 and "verified 29 chunks of 23 files" in ok.stdout
    bad_dir = tmp_path / "blobs"
    shutil.copytree(nydus_fixtures / "v5-sha256-none/blobs", bad_dir)
    blob = next(bad_dir.iterdir())
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF  # inside the first chunk of the blob
    blob.write_bytes(bytes(data))
    bad = run("--verify", "--blob-dir", str(bad_dir), str(boot))
    assert bad.returncode == 1
    assert "verify failed" in bad.stderr and "chunk 0" in bad.stderr and "digest mismatch" in bad.stderr


def test_errors_are_one_line_exit_1(nydus_fixtures, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 5000)
    out = run(str(junk))
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "not a RAFS image" in out.stderr
    legacy = run(str(nydus_fixtures / "v5-metadata-only/bootstrap"))
    assert legacy.returncode == 1 and "legacy pre-release v5 inode layout" in legacy.stderr
