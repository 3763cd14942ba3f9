"""sealer's clientfile/start.sh sequence with the single-file `nydusd` drop-in, exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import rafs
from rafs.localblob import LocalBlobs, walk
from tests.format.images import real_images
from tests.mountutil import BlobServerProc, Daemon, fstype_at, require_fuse

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dropin(tmp_path_factory) -> Path:
    """dist/nydusd built fresh and copied alone into an empty directory (like /usr/bin)."""
    out = tmp_path_factory.mktemp("usr-bin") / "nydusd"
    subprocess.run([sys.executable, str(ROOT / "tools/dropin.py"), "--out", str(out)], check=True,
                   capture_output=True)
    return out


def httpserver_json(port: int, work_dir: str) -> dict:
    """sealer's httpserver.json (nydusd-contract.md 0.3), pointing at our blob server."""
    return {"device": {"backend": {"type": "registry", "config": {
        "scheme": "http", "host": f"127.0.0.1:{port}", "repo": "sealer"}},
        "cache": {"type": "blobcache", "config": {"work_dir": work_dir}}},
        "mode": "direct", "digest_validate": False, "enable_xattr": True,
        "fs_prefetch": {"enable": True, "threads_count": 1, "merging_size": 131072,
                        "bandwidth_rate": 10485760}}


@pytest.mark.parametrize("force_detach_first", [False, True])
def test_start_sh_sequence(nydus_fixtures, tmp_path, dropin, force_detach_first):
    require_fuse()
    boot, blob_dir = real_images(nydus_fixtures)["v5-sha256-none"]
    d = tmp_path / "nydusd"
    d.mkdir()
    shutil.copy(boot, d / "rootfs.meta")
    server = BlobServerProc(blob_dir)
    work_rel = f"./tmp/pynydusd-sealer-{uuid.uuid4().hex[:8]}"  # cwd is / under systemd
    (d / "httpserver.json").write_text(json.dumps(httpserver_json(server.port, work_rel)))
    for sub in ("nydusdfs", "upper", "work"):
        (d / sub).mkdir()
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    argv = [str(dropin), "--thread-num", "10", "--log-level", "debug", "--mountpoint",
            f"{d}/nydusdfs", "--apisock", f"{d}/nydusd.sock", "--id", "sealer", "--bootstrap",
            f"{d}/rootfs.meta", "--config", f"{d}/httpserver.json", "--supervisor",
            f"{d}/supervisor.sock"]
    daemon = Daemon(argv, d / "nydusdfs", cwd="/", wait=False)
    overlay = False
    try:
        time.sleep(0.5)  # start.sh: sleep 0.5, then mount the overlay
        assert fstype_at(d / "nydusdfs") == "fuse", "FUSE mount not in place 0.5 s after exec"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={d}/nydusdfs,upperdir={d}/upper,workdir={d}/work",
                        str(rootfs), "-o", "index=off"], check=True)
        overlay = True
        image = rafs.open_image(boot)
        with LocalBlobs(image, str(blob_dir)) as blobs:
            for path, inode in walk(image):
                full = os.path.join(rootfs, path.decode().lstrip("/"))
                st = os.lstat(full)
                assert (stat_t(st.st_mode), st.st_size) == (stat_t(inode.mode), inode.size), path
                if inode.is_reg:
                    with open(full, "rb") as f:
                        assert f.read() == blobs.read_file(inode.ino), path
            script = rootfs / "normal-file-test/test.sh"
            with open(script, "a") as f:  # copy-up through the overlay, as sealer's clean.sh append
                f.write("\n# appended\n")
            assert script.read_bytes().endswith(b"\n# appended\n")
            assert (d / "upper/normal-file-test/test.sh").exists()
        assert (Path("/") / work_rel / "pynydusd").is_dir()  # relative work_dir resolved against /
        assert (d / "nydusd.sock").exists() and oct((d / "nydusd.sock").stat().st_mode)[-3:] == "600"
        if force_detach_first:
            subprocess.run(["umount", "-lf", f"{d}/nydusdfs"], check=True)
        rc, took = daemon.terminate()
        assert rc == 0 and took < 2.0, daemon.output()
        assert fstype_at(d / "nydusdfs") is None
        assert not (d / "nydusd.sock").exists()
        assert "Traceback" not in daemon.output()
    finally:
        if overlay:
            subprocess.run(["umount", "-l", str(rootfs)], check=False)
        daemon.stop()
        server.stop()
        shutil.rmtree(Path("/") / work_rel, ignore_errors=True)
    assert any("Range" in r or "GET" in r for r in server.requests())


def stat_t(mode: int) -> int:
    return mode & 0o170000
