"""A misbehaving blob server behind a real mount: correct bytes or EIO, never wrong bytes.

Each fault mode of tests.faultserver is switched on after the mount is up: a cold read of a file
must then fail with EIO (after the backend's retries) or, for a merely slow server, return the
right bytes; metadata and cached files keep working meanwhile; once the server behaves again, the
same read returns the right bytes; the API counters show the failures.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faultserver import MODES, FaultServer
from tests.mounted.test_mount_built import _api
from tests.mountutil import PYNYDUSD, Daemon, require_fuse

IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"
FILES = {"warm.txt": 3000, "big.bin": 600 << 10, "small.bin": 20000, "other.bin": 300 << 10}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile-server")
    src = tmp / "src"
    src.mkdir()
    rnd = random.Random(5)
    for name, size in FILES.items():  # half random, half compressible
        (src / name).write_bytes(rnd.randbytes(size // 2) + bytes(size - size // 2))
    (src / "dir").mkdir()
    (src / "dir/f").write_text("nested\n")
    subprocess.run([str(IMAGE_TOOL), "create", "--fs-version", "6", "--compressor", "zstd",
                    "--chunk-size", "0x10000", "--blob-dir", str(tmp / "blobs"), "--bootstrap",
                    str(tmp / "bootstrap"), str(src)], check=True, capture_output=True)
    digests = {n: hashlib.sha256((src / n).read_bytes()).hexdigest() for n in FILES}
    return tmp, digests


def sha(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def mount(image_dir: Path, tmp_path: Path, port: int, digest_validate: bool,
          timeout: int = 1) -> tuple[Daemon, Path]:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({
        "device": {"backend": {"type": "registry", "config": {
            "host": f"127.0.0.1:{port}", "repo": "hostile/test", "scheme": "http",
            "timeout": timeout, "connect_timeout": 1, "retry_limit": 2}},
            "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}}},
        "mode": "direct", "digest_validate": digest_validate, "fs_prefetch": {"enable": False}}))
    mnt, sock = tmp_path / "mnt", tmp_path / "api.sock"
    mnt.mkdir()
    d = Daemon([str(PYNYDUSD), "--bootstrap", str(image_dir / "bootstrap"), "--config", str(cfg),
                "--apisock", str(sock), "--mountpoint", str(mnt)], mnt)
    return d, sock


CASES = [(m, False) for m in MODES] + [("wrong-bytes", True), ("html-206", True)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("mode", "digest_validate"), CASES,
                         ids=[f"{m}{'-digest_validate' if v else ''}" for m, v in CASES])
def test_faulty_server_gives_right_bytes_or_eio(image, tmp_path, mode, digest_validate):
    require_fuse()
    image_dir, digests = image
    server = FaultServer(image_dir / "blobs", stall_s=3.0)
    d, sock = mount(image_dir, tmp_path, server.port, digest_validate)
    mnt = d.mountpoint
    try:
        assert sha(mnt / "warm.txt") == digests["warm.txt"]  # cached before the fault
        server.mode = mode
        try:
            got = sha(mnt / "big.bin")
        except OSError as e:
            assert e.errno == errno.EIO, e
            got = None
        if mode == "slow":
            assert got == digests["big.bin"]
        else:
            assert got is None, f"{mode}: read returned bytes instead of EIO"
        # the daemon keeps serving what does not need the server
        assert sorted(os.listdir(mnt)) == sorted([*FILES, "dir"])
        assert (mnt / "dir/f").stat().st_size == 7
        assert (mnt / "small.bin").stat().st_size == FILES["small.bin"]
        assert sha(mnt / "warm.txt") == digests["warm.txt"]
        faulty = dict(server.served)
        # the server recovers: the same reads, and the others, now succeed
        server.mode = "ok"
        for name in FILES:
            assert sha(mnt / name) == digests[name], name
        status, body = _api(sock, "GET", "/api/v1/metrics/backend")
        metrics = json.loads(body)
        assert status == 200
        if mode != "slow":
            assert faulty.get(mode, 0) >= 2, f"the read was not retried: {faulty}"
            failures = metrics["read_errors"] + metrics["read_retries"] + metrics["fetch_bad_data"]
            assert failures > 0, metrics
            # and the failed read is in the error ring, dated
            events = json.loads(_api(sock, "GET", "/api/v1/daemon/events")[1])
            assert events["total_errors"] >= 1 and events["errors"], events
            assert " GMT - " in events["errors"][-1]
        out = d.output()
        assert "Traceback" not in out, out
    finally:
        d.stop()
        server.stop()


def test_sigterm_during_a_read_stuck_on_a_silent_server_exits_at_once(image, tmp_path):
    """E10: a reader blocked on a server that never answers (5 s timeout, retries) must not hold
    up a SIGTERM: the daemon detaches the mount and exits 0 within a second or two."""
    require_fuse()
    image_dir, _ = image
    server = FaultServer(image_dir / "blobs", stall_s=60.0)
    server.mode = "stall"
    d, sock = mount(image_dir, tmp_path, server.port, False, timeout=10)
    mnt = tmp_path / "mnt"
    reader = subprocess.Popen(["cat", str(mnt / "big.bin")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while sum(server.served.values()) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the read is now waiting on the server
        assert sum(server.served.values()), "the read never reached the server"
        # hang detection: the stuck read is in flight (FUSE opcode 15)
        status, body = _api(sock, "GET", "/api/v1/metrics/inflight")
        assert status == 200 and any(op["opcode"] == 15 for op in json.loads(body)), body
        rc, took = d.terminate(timeout=20)
        assert rc == 0 and took < 3, (rc, took, d.output()[-2000:])
    finally:
        reader.kill()
        reader.wait()
        d.stop()
        server.stop()
