"""Through a real mount: kill -9 during a cold read with prefetch, a cache disk that fills up, and
32 concurrent readers over a slow server."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.faultserver import FaultServer
from tests.mountutil import PYNYDUSD, BlobServerProc, Daemon, fstype_at, require_fuse

IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"


def make_tree(src: Path, seed: int, files: int, max_size: int) -> dict[str, str]:
    """A tree of `files` files (half random, half compressible bytes) in a few directories;
    returns relative path -> sha256."""
    rnd = random.Random(seed)
    out = {}
    for i in range(files):
        rel = f"d{i % 7}/sub{i % 3}/f{i}.bin"
        size = rnd.choice([0, 1, 100, 4095, 4096, 70000, rnd.randrange(max_size)])
        data = rnd.randbytes(size // 2) + bytes([i % 251]) * (size - size // 2)
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def build(tmp: Path, files: int, max_size: int, chunk: str = "0x10000") -> dict[str, str]:
    src = tmp / "src"
    truth = make_tree(src, 3, files, max_size)
    subprocess.run([str(IMAGE_TOOL), "create", "--fs-version", "6", "--compressor", "zstd",
                    "--chunk-size", chunk, "--blob-dir", str(tmp / "blobs"), "--bootstrap",
                    str(tmp / "bootstrap"), str(src)], check=True, capture_output=True)
    return truth


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_all(mnt: Path, truth: dict[str, str], stop: threading.Event | None = None) -> None:
    for rel in truth:
        if stop is not None and stop.is_set():
            return
        try:
            sha(mnt / rel)
        except OSError:
            return  # the daemon was killed under us


@pytest.fixture(scope="module")
def crash_image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    return tmp, build(tmp, 120, 1 << 20)


ROUNDS = 20


@pytest.mark.timeout(600)
def test_kill_9_during_cold_read_with_prefetch_then_restart(crash_image, tmp_path):
    """20 rounds: a cold full read with prefetch on, kill -9 at a random moment, restart on the
    same cache: every file's sha256 is right every time."""
    require_fuse()
    image_dir, truth = crash_image
    # a server taking 40 ms per request and a small prefetch batch: a cold read lasts seconds
    server = FaultServer(image_dir / "blobs", delay_s=0.04)
    rnd = random.Random(20)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    killed_with_ready = []
    try:
        for round_ in range(ROUNDS):
            cache = tmp_path / f"cache{round_}"
            cfg = tmp_path / f"config{round_}.json"
            cfg.write_text(json.dumps({
                "device": {"backend": {"type": "registry", "config": {
                    "host": f"127.0.0.1:{server.port}", "repo": "crash/test", "scheme": "http"}},
                    "cache": {"type": "blobcache", "config": {"work_dir": str(cache)}}},
                "mode": "direct", "fs_prefetch": {"enable": True, "threads_count": 2,
                                                  "merging_size": 131072}}))
            argv = [str(PYNYDUSD), "--bootstrap", str(image_dir / "bootstrap"), "--config",
                    str(cfg), "--mountpoint", str(mnt)]
            d = Daemon(argv, mnt)
            reader = threading.Thread(target=read_all, args=(mnt, truth))
            reader.start()
            time.sleep(rnd.uniform(0.0, 2.5))
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
            reader.join(timeout=30)
            assert not reader.is_alive(), "a reader hung on the killed mount"
            ready = sum(f.read_bytes()[32:].count(1)
                        for f in (cache / "pynydusd").glob("*.ready"))
            killed_with_ready.append(ready)
            d.log.close()
            d2 = Daemon(argv, mnt)  # takes over the dead mount, same cache
            try:
                for rel, digest in truth.items():
                    assert sha(mnt / rel) == digest, f"round {round_}: {rel}"
            finally:
                d2.stop()
        print(f"\nkill -9 rounds: chunks ready at the kill {killed_with_ready}; all files right")
        # the kills landed at different stages: before anything was committed, midway, after
        # all was (ready counts move in steps: the cache commits once a second)
        most = max(killed_with_ready)
        assert 0 in killed_with_ready and any(0 < k < most for k in killed_with_ready), \
            killed_with_ready
    finally:
        server.stop()
        if fstype_at(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.timeout(300)
def test_full_cache_disk_through_the_mount(tmp_path):
    """work_dir on a 1 MiB tmpfs: reads are right (served uncached, with a warning); once space
    returns, the cache fills and then serves every file with the backend gone."""
    require_fuse()
    truth = build(tmp_path, 40, 400 << 10)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    server = BlobServerProc(tmp_path / "blobs")
    argv = [str(PYNYDUSD), "--bootstrap", str(tmp_path / "bootstrap"), "--backend",
            f"http://127.0.0.1:{server.port}/full", "--cache-dir", str(small), "--no-prefetch",
            str(mnt)]
    d = None
    try:
        d = Daemon(argv, mnt)
        for rel, digest in truth.items():
            assert sha(mnt / rel) == digest, rel
        assert "cache disk full" in d.output()
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        d.stop()
        d = Daemon(argv, mnt)  # the same cache, now with room
        for rel, digest in truth.items():
            assert sha(mnt / rel) == digest, rel
        d.stop()
        server.stop()
        server = None
        d = Daemon(argv, mnt)  # backend gone: only a consistent, complete cache can answer
        for rel, digest in truth.items():
            assert sha(mnt / rel) == digest, rel
        d.assert_clean_log()
    finally:
        if d is not None:
            d.stop()
        if server is not None:
            server.stop()
        subprocess.run(["umount", "-l", str(small)], check=False)


LOAD_SECONDS = int(os.environ.get("PYNYDUSD_LOAD_SECONDS", "60"))


def _vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.mark.timeout(LOAD_SECONDS + 240)
def test_32_readers_over_a_slow_server(tmp_path):
    """32 threads (whole files, random 4 KiB reads, metadata walks) for LOAD_SECONDS over a cold
    image behind a server that takes 20 ms per request: no error, no hang, bounded memory."""
    require_fuse()
    truth = build(tmp_path, 400, 3 << 20, chunk="0x4000")
    server = FaultServer(tmp_path / "blobs", delay_s=0.02)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({
        "device": {"backend": {"type": "registry", "config": {
            "host": f"127.0.0.1:{server.port}", "repo": "load/test", "scheme": "http",
            "timeout": 30}},
            "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}}},
        "mode": "direct", "fs_prefetch": {"enable": False}}))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    d = Daemon([str(PYNYDUSD), "--bootstrap", str(tmp_path / "bootstrap"), "--config", str(cfg),
                "--thread-num", "16", "--mountpoint", str(mnt)], mnt)
    base_rss = _vm(d.proc.pid, "VmRSS")
    errors: list[str] = []
    counts = {"files": 0, "random": 0, "walks": 0}
    deadline = time.monotonic() + LOAD_SECONDS
    names = list(truth)
    sizes = {rel: (tmp_path / "src" / rel).stat().st_size for rel in names}

    def whole(rnd: random.Random) -> None:
        rel = rnd.choice(names)
        if sha(mnt / rel) != truth[rel]:
            errors.append(f"wrong bytes in {rel}")
        counts["files"] += 1

    def random_reads(rnd: random.Random) -> None:
        rel = rnd.choice([n for n in names[:50] if sizes[n] > 4096] or names)
        with open(mnt / rel, "rb") as f, open(tmp_path / "src" / rel, "rb") as g:
            for _ in range(20):
                off = rnd.randrange(max(sizes[rel] - 4096, 1))
                if os.pread(f.fileno(), 4096, off) != os.pread(g.fileno(), 4096, off):
                    errors.append(f"wrong bytes in {rel} at {off}")
                counts["random"] += 1

    def walk(rnd: random.Random) -> None:
        seen = 0
        for root, dirs, files in os.walk(mnt):
            for n in dirs + files:
                os.lstat(os.path.join(root, n))
                seen += 1
        if seen != len(names) + 7 + 21:
            errors.append(f"walk saw {seen} entries")
        counts["walks"] += 1

    def worker(i: int) -> None:
        rnd = random.Random(i)
        job = (whole, random_reads, walk)[i % 3]
        while time.monotonic() < deadline and not errors:
            try:
                job(rnd)
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                errors.append(f"{job.__name__}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=LOAD_SECONDS + 120)
        hung = sum(t.is_alive() for t in threads)
        peak = _vm(d.proc.pid, "VmHWM")
        print(f"\nload: {LOAD_SECONDS} s, 32 readers: {counts}; daemon RSS at mount "
              f"{base_rss >> 20} MiB, peak {peak >> 20} MiB; {server.served['ok']} requests")
        assert hung == 0, f"{hung} readers hung"
        assert not errors, errors[:5]
        assert counts["files"] and counts["random"] and counts["walks"]
        # memory: the 16 MiB chunk LRU plus in-flight reads; never the whole image (it is larger)
        assert peak - base_rss < 128 << 20, (base_rss, peak)
        d.assert_clean_log()
    finally:
        d.stop()
        server.stop()
