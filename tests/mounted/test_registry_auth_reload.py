"""Registry credentials kept off disk (IMAGE_PULL_AUTH) and replaced while mounted
(PUT /api/v1/config), against Debian's docker-registry with htpasswd auth on 127.0.0.1."""

from __future__ import annotations

import base64
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.mountutil import PYNYDUSD, Daemon, api_call, listening, require_fuse, wait_for
from tests.servers import Registry

GOOD = base64.b64encode(b"alice:s3cret").decode()
WRONG = base64.b64encode(b"alice:nope").decode()


@pytest.fixture
def image(sample_v6) -> tuple[Path, Path]:
    return sample_v6


def config(tmp_path: Path, port: int, auth: str | None) -> Path:
    backend = {"scheme": "http", "host": f"127.0.0.1:{port}", "repo": "private/img"}
    if auth:
        backend["auth"] = auth
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"device": {
        "backend": {"type": "registry", "config": backend},
        "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}}},
        "mode": "direct", "fs_prefetch": {"enable": False}}))
    return path


def read_errno(path: Path) -> int | None:
    try:
        path.read_bytes()
        return None
    except OSError as e:
        return e.errno


@pytest.mark.timeout(120)
def test_credentials_are_replaced_over_the_api(image, tmp_path):
    """Wrong credentials: reads fail with EIO. PUT /api/v1/config with the right ones: the same
    reads work, without a restart. Back to wrong ones: the header negotiated before is dropped,
    so a read not cached yet fails again (the fix of nydus#1893)."""
    require_fuse()
    img, src = image
    reg = Registry(tmp_path / "reg", "alice", "s3cret")
    mnt, sock = tmp_path / "mnt", tmp_path / "api.sock"
    mnt.mkdir()
    d = None
    try:
        for blob in (img / "blobs").iterdir():
            reg.push_blob("private/img", blob.read_bytes())
        d = Daemon([str(PYNYDUSD), "--bootstrap", str(img / "bootstrap"), "--config",
                    str(config(tmp_path, reg.port, WRONG)), "--apisock", str(sock), str(mnt)], mnt)
        wait_for(lambda: listening(sock), what="the API socket")
        assert read_errno(mnt / "data/random-300k.bin") == errno.EIO
        code, body = api_call(sock, "PUT", "/api/v1/config",
                              json.dumps({"registry_auth": "not base64!"}).encode())
        assert code == 500 and b"base64" in body
        code, _ = api_call(sock, "PUT", "/api/v1/config", json.dumps({"timeout": "1"}).encode())
        assert code == 500  # only registry_auth can change, as upstream
        code, _ = api_call(sock, "PUT", "/api/v1/config",
                           json.dumps({"registry_auth": GOOD}).encode())
        assert code == 204
        assert (mnt / "data/random-300k.bin").read_bytes() == \
            (src / "data/random-300k.bin").read_bytes()
        code, body = api_call(sock, "GET", "/api/v1/config")
        assert code == 200 and json.loads(body) == {"registry_auth": ""}  # never shown
        assert GOOD not in d.output() and "s3cret" not in d.output()
        assert api_call(sock, "PUT", "/api/v1/config",
                        json.dumps({"registry_auth": WRONG}).encode())[0] == 204
        assert read_errno(mnt / "data/text-1m.txt") == errno.EIO
        # what is cached still reads
        assert (mnt / "data/random-300k.bin").read_bytes() == \
            (src / "data/random-300k.bin").read_bytes()
    finally:
        if d is not None:
            d.stop()
        reg.stop()


@pytest.mark.timeout(120)
def test_image_pull_auth_replaces_the_config_auth(image, tmp_path):
    """IMAGE_PULL_AUTH (base64 user:password) overrides the config's auth, so the file can
    carry none; a malformed value fails the start with a clear error."""
    require_fuse()
    img, src = image
    reg = Registry(tmp_path / "reg", "alice", "s3cret")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    d = None
    try:
        for blob in (img / "blobs").iterdir():
            reg.push_blob("private/img", blob.read_bytes())
        cfg = config(tmp_path, reg.port, None)
        argv = [str(PYNYDUSD), "--bootstrap", str(img / "bootstrap"), "--config", str(cfg),
                str(mnt)]
        r = subprocess.run(argv, env=os.environ | {"IMAGE_PULL_AUTH": "%%%"}, capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 1 and "not valid base64" in r.stderr, r.stderr
        os.environ["IMAGE_PULL_AUTH"] = GOOD
        try:
            d = Daemon(argv, mnt)
        finally:
            del os.environ["IMAGE_PULL_AUTH"]
        assert (mnt / "data/text-1m.txt").read_bytes() == (src / "data/text-1m.txt").read_bytes()
        assert GOOD not in d.output()
    finally:
        if d is not None:
            d.stop()
        reg.stop()
