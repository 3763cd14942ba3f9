"""Builder outputs through a real mount; restarts over stale mounts; the API socket."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.buildinfo import build_info
from rafs import chunkmap
from tests.mountutil import (
    PYNYDUSD,
    BlobServerProc,
    Daemon,
    fstype_at,
    listening,
    require_fuse,
    wait_for,
)
from tests.mountutil import api_call as _api
from tests.treeutil import make_source, source_manifest

IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"


def build(src: Path, out: Path, version: str) -> None:
    subprocess.run([str(IMAGE_TOOL), "create", "--fs-version", version, "--chunk-size", "0x10000",
                    "--blob-dir", str(out / "blobs"), "--bootstrap", str(out / "bootstrap"),
                    str(src)], check=True, capture_output=True)


def mount_local(img: Path, tmp_path: Path, *extra: str) -> tuple[Daemon, Path]:
    """A daemon mounting image dir `img` (bootstrap, blobs/) from its local blobs at
    tmp_path/mnt."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    return Daemon([str(PYNYDUSD), "--bootstrap", str(img / "bootstrap"), "--backend",
                   str(img / "blobs"), *extra, str(mnt)], mnt), mnt


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("built")
    src = make_source(tmp)
    for v in ("5", "6"):
        build(src, tmp / f"v{v}", v)
    return tmp, src


@pytest.mark.parametrize("version", ["5", "6"])
def test_mount_of_builder_output_equals_source(built, tmp_path, version):
    require_fuse()
    tmp, src = built
    server = BlobServerProc(tmp / f"v{version}/blobs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    d = Daemon([str(PYNYDUSD), "--bootstrap", str(tmp / f"v{version}/bootstrap"), "--backend",
                f"http://127.0.0.1:{server.port}/sample", "--cache-dir", str(tmp_path / "cache"),
                str(mnt)], mnt)
    try:
        got, want = source_manifest(mnt), source_manifest(src)
        # nydusd policies: the root shows 0755; everything else is exactly the source tree
        assert stat.S_IMODE(got[b"/"][0]) == 0o755
        got[b"/"] = want[b"/"] = None
        assert got == want
        d.assert_clean_log()
        # the daemon says which chunk lookup served these bytes (make test runs this twice)
        assert f"chunk lookup: {chunkmap.IMPLEMENTATION})" in d.output()
    finally:
        d.stop()
        server.stop()


def test_api_socket(built, tmp_path):
    require_fuse()
    tmp, _src = built
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"device": {"id": "cache-7", "backend": {"type": "localfs", "config": {
        "dir": str(tmp / "v6/blobs"), "auth": "c2VjcmV0OnBhc3N3b3Jk"}},
        "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}}},
        "mode": "direct"}))
    mnt, sock = tmp_path / "mnt", tmp_path / "api.sock"
    mnt.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()  # a stale socket (nobody listens) is replaced
    d = Daemon([str(PYNYDUSD), "--bootstrap", str(tmp / "v6/bootstrap"), "--config", str(cfg),
                "--apisock", str(sock), "--log-level", "trace", str(mnt)], mnt)
    try:
        (mnt / "data/text-1m.txt").read_bytes()
        from tests.mountutil import wait_for

        wait_for(lambda: listening(sock), what="the API socket")
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        code, body = _api(sock, "GET", "/api/v1/daemon")
        info = json.loads(body)
        assert code == 200 and info["state"] == "RUNNING"
        assert info["version"] == build_info() and info["version"]["package_ver"]
        assert b"c2VjcmV0" not in body  # credentials never leave the daemon
        assert "c2VjcmV0" not in d.output() and "password" not in d.output()  # nor reach its log
        code, body = _api(sock, "GET", "/api/v1/metrics")
        m = json.loads(body)
        assert code == 200 and m["data_read"] >= 1114112 and len(m["fop_hits"]) == 15
        # nydusd's histograms: every read counted by size and by latency
        assert len(m["fop_cumulative_latency_total"]) == 15 and m["fop_cumulative_latency_total"][4]
        assert len(m["block_count_read"]) == len(m["read_latency_dist"]) == 8
        assert sum(m["block_count_read"]) == sum(m["read_latency_dist"]) == m["fop_hits"][4] > 0
        code, body = _api(sock, "GET", "/api/v1/metrics/backend")
        b = json.loads(body)
        assert b["read_count"] > 0
        assert sum(b["read_count_block_size_dist"]) == b["read_count"]
        assert sum(map(sum, b["read_latency_sizes_dist"])) == b["read_count"]
        assert len(b["read_cumulative_latency_millis_dist"]) == 8
        code, body = _api(sock, "GET", "/api/v1/metrics/blobcache")
        c = json.loads(body)
        assert code == 200 and "whole_hits" in c
        # nydusd names the cache by the config's id; another id has no cache
        assert json.loads(_api(sock, "GET", "/api/v1/metrics/blobcache?id=cache-7")[1]).keys() == c.keys()
        assert _api(sock, "GET", "/api/v1/metrics/blobcache?id=cache-8")[0] == 404
        assert {"prefetch_unmerged_chunks", "prefetch_cumulative_time_millis",
                "prefetch_begin_time_millis", "prefetch_end_time_millis",
                "buffered_backend_size"} <= set(c)
        code, body = _api(sock, "GET", "/metrics")
        assert code == 200 and b"pynydusd_storage_read_count" in body
        prom = dict(line.rsplit(" ", 1) for line in body.decode().splitlines()
                    if not line.startswith("#"))
        with open(f"/proc/{d.proc.pid}/status") as f:  # the daemon's own RSS, as the kernel says
            rss = next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS:"))
        assert abs(float(prom["process_resident_memory_bytes"]) - rss) < rss / 4
        assert float(prom["process_open_fds"]) == pytest.approx(
            len(os.listdir(f"/proc/{d.proc.pid}/fd")), abs=4)
        assert 0 < time.time() - float(prom["process_start_time_seconds"]) < 120
        held = open(mnt / "data/text-1m.txt", "rb")  # nr_opens: files open now
        wait_for(lambda: json.loads(_api(sock, "GET", "/api/v1/metrics")[1])["nr_opens"] == 1,
                 what="nr_opens 1")
        held.close()
        wait_for(lambda: json.loads(_api(sock, "GET", "/api/v1/metrics")[1])["nr_opens"] == 0,
                 what="nr_opens 0 after the close")
        code, body = _api(sock, "GET", "/api/v1/nothing")
        assert code == 404 and json.loads(body)["code"] == "UNDEFINED"
        code, body = _api(sock, "PUT", "/api/v1/daemon/fuse/takeover")  # no --supervisor given
        assert code == 400 and b"supervisor" in body
        code, _ = _api(sock, "PUT", "/api/v1/daemon", b'{"log_level": "warn"}')
        assert code == 204
    finally:
        d.stop()
    assert not sock.exists()


def test_restart_over_a_killed_daemons_mount(built, tmp_path):
    require_fuse()
    tmp, _src = built
    mnt, sock = tmp_path / "mnt", tmp_path / "api.sock"
    mnt.mkdir()
    argv = [str(PYNYDUSD), "--bootstrap", str(tmp / "v5/bootstrap"), "--backend",
            str(tmp / "v5/blobs"), "--cache-dir", str(tmp_path / "cache"), "--apisock", str(sock),
            str(mnt)]
    first = Daemon(argv, mnt)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    with pytest.raises(OSError):  # the dead mount: ENOTCONN
        os.listdir(mnt)
    second = Daemon(argv, mnt)
    try:
        assert (mnt / "README.txt").read_bytes().startswith(b"pynydusd sample image")
        assert "stale FUSE mount" in second.output()
    finally:
        second.stop()
        first.stop()
    assert fstype_at(mnt) is None


def test_a_second_daemon_leaves_a_live_mount_alone(built, tmp_path):
    """Only a dead FUSE mount is stale: a second daemon (its own API socket, which of course does
    not answer yet) must refuse the mountpoint of a daemon that is serving it."""
    require_fuse()
    tmp, _src = built
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def argv(sock: str) -> list[str]:
        return [str(PYNYDUSD), "--bootstrap", str(tmp / "v5/bootstrap"), "--backend",
                str(tmp / "v5/blobs"), "--apisock", str(tmp_path / sock), str(mnt)]

    first = Daemon(argv("a.sock"), mnt)
    try:
        second = subprocess.run(argv("b.sock"), capture_output=True, text=True, timeout=30)
        assert second.returncode == 1 and "live FUSE mount" in second.stderr, second.stderr
        assert first.proc.poll() is None
        assert (mnt / "README.txt").read_bytes().startswith(b"pynydusd sample image")
    finally:
        first.stop()


def _raw_api(sock: Path, request: bytes) -> tuple[int, dict, bytes]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(sock))
    s.sendall(request)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, payload


def test_api_socket_answers_bad_and_many_clients(built, tmp_path):
    """Every answer in nydusd's shape (JSON, `Server: Nydus API`): 400 for a wrong method or a
    bad body, 404 for an unknown id, 501 for what is not implemented; idle and surplus clients
    cost bounded file descriptors, and the mount keeps serving."""
    require_fuse()
    tmp, _src = built
    sock = tmp_path / "api.sock"
    d, mnt = mount_local(tmp / "v6", tmp_path, "--apisock", str(sock))
    try:
        wait_for(lambda: listening(sock), what="the API socket")
        level = b'{"log_level": "info"}'
        cases = [
            (b"POST /api/v1/daemon HTTP/1.1\r\nContent-Length: 21\r\n\r\n" + level, 400),
            (b"DELETE /api/v1/daemon HTTP/1.1\r\nContent-Length: 21\r\n\r\n" + level, 400),
            (b"PATCH /api/v1/daemon HTTP/1.1\r\n\r\n", 400),
            (b"garbage\r\n\r\n", 400),
            (b"PUT /api/v1/daemon HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400),
            (b"PUT /api/v1/daemon HTTP/1.1\r\nContent-Length: 4\r\n\r\nnull", 400),
            (b"PUT /api/v1/daemon HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
            (b"PUT /api/v1/daemon HTTP/1.1\r\nContent-Length: 100000000000\r\n\r\n", 400),
            (b"PUT /api/v1/daemon HTTP/1.1\r\nContent-Length: \xc2\xb2\r\n\r\n", 400),
            (b"PUT /api/v1/daemon HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400),
            (b"PUT /api/v1/daemon HTTP/1.1\r\nContent-Length: 16\r\n\r\n" + b'{"log_level": 5}', 500),
            (b"PUT /api/v1/daemon HTTP/1.1\r\nContent-Length: 21\r\n\r\n" + level, 204),
            (b"GET /api/v1/metrics?id=/nonexistent HTTP/1.1\r\n\r\n", 404),
            (b"GET /api/v1/metrics?id=/ HTTP/1.1\r\n\r\n", 200),
            (b"GET /api/v2/blobs HTTP/1.1\r\n\r\n", 501),
            (b"GET /api/v1/metrics/inflight HTTP/1.1\r\n\r\n", 204),  # nothing in flight
            (b"POST /api/v1/mount?mountpoint=/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 501),
        ]
        for request, code in cases:
            got, headers, body = _raw_api(sock, request.replace(
                b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
            assert got == code, (request, got, body)
            assert headers["Server"] == "Nydus API", headers
            if body:
                assert headers["Content-Type"] == "application/json"
                assert got < 300 or json.loads(body)["code"] == "UNDEFINED"
        # a body the daemon does not read ends the connection: it is never parsed as a request
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(str(sock))
        body = b'{"registry_auth": "dXNlcjpwYXNz"}'
        s.sendall(b"PUT /api/v1/mount?mountpoint=/x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
                  + body + b"GET /api/v1/daemon HTTP/1.1\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        assert data.startswith(b"HTTP/1.1 501") and data.count(b"HTTP/1.1") == 1, data
        assert b"dXNlcjpwYXNz" not in data
        for framing in (b"Transfer-Encoding: chunked\r\n\r\n2d\r\n",  # a chunked body
                        b"Content-Length: 0\r\nContent-Length: 45\r\n\r\n"):  # two lengths
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(str(sock))
            s.sendall(b"POST /api/v1/daemon/exit HTTP/1.1\r\n" + framing
                      + b"GET /api/v1/daemon/events HTTP/1.1\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
            assert data.count(b"HTTP/1.1 ") == 1, data  # the body never runs as a request
        fds = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
        idle = []
        for _ in range(200):  # clients that connect and never speak
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock))
            idle.append(s)
        time.sleep(0.5)
        assert len(os.listdir(f"/proc/{d.proc.pid}/fd")) < fds + 60
        assert (mnt / "README.txt").read_bytes().startswith(b"pynydusd sample image")
        for s in idle:
            s.close()
        def answers() -> bool:  # while the closed idle clients are still counted: 503, reset
            try:
                return _raw_api(sock, b"GET /api/v1/daemon HTTP/1.1\r\nConnection: close"
                                      b"\r\n\r\n")[0] == 200
            except OSError:  # (a reset, a broken pipe)
                return False

        wait_for(answers, what="the API after the flood")
        # a burst of clients connecting together: each gets an answer, none is refused
        burst = []
        for _ in range(60):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock))
            burst.append(s)
        answers = []
        for s in burst:
            s.settimeout(10)
            try:
                s.sendall(b"GET /api/v1/daemon HTTP/1.1\r\nConnection: close\r\n\r\n")
            except OSError:  # hung up on: the daemon was answering 503 to MAX_REFUSING others
                answers.append(b"refused")
                s.close()
                continue
        for s in burst:
            if s.fileno() < 0:
                continue
            try:
                answers.append(s.recv(12).split()[1])
            except OSError:
                answers.append(b"refused")
            s.close()
        assert set(answers) <= {b"200", b"503", b"refused"} and b"200" in answers, answers
        d.assert_clean_log()
    finally:
        d.stop()


@pytest.mark.parametrize("option, window", [((), 4096), (("--readahead-kb", "0"), None),
                                            (("--readahead-kb", "512"), 512)])
def test_the_mount_gets_a_large_readahead_window(built, tmp_path, option, window):
    """Sequential reads then come in 1 MiB requests, several in flight (the kernel's 128 KiB
    window made them 128 KiB, one or two at a time). The kernel caps the window at FUSE INIT, so
    it is set after INIT; 0 leaves the kernel's own."""
    require_fuse()
    tmp, src = built
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    d = Daemon([str(PYNYDUSD), "--bootstrap", str(tmp / "v6/bootstrap"), "--backend",
                str(tmp / "v6/blobs"), *option, str(mnt)], mnt)
    try:
        dev = os.stat(mnt).st_dev
        path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        kernel_default = 128
        expect = window or kernel_default
        wait_for(lambda: int(path.read_text()) == expect, timeout=5,
                 what=f"read_ahead_kb {expect}")
        time.sleep(0.2)
        assert int(path.read_text()) == expect  # and it stays
        big = max((p for p in src.rglob("*") if p.is_file() and not p.is_symlink()),
                  key=lambda p: p.stat().st_size)
        assert (mnt / big.relative_to(src)).read_bytes() == big.read_bytes()
    finally:
        d.stop()


@pytest.mark.parametrize("version", ["v5", "v6"])
def test_backend_info_describes_the_mounted_superblock(built, tmp_path, version):
    """GET /api/v1/daemon/backend?mountpoint=/ gives the superblock in nydusd's RafsSuperMeta
    fields; each one checked here is read from the bootstrap's bytes by the test itself."""
    import struct

    require_fuse()
    tmp, _src = built
    boot = (tmp / version / "bootstrap").read_bytes()
    if version == "v5":
        (magic, ver, sb_size, chunk_size, flags, inodes, itable_off, prefetch_off, blob_off,
         itable_n, prefetch_n, blob_size, ext_n, ext_off) = struct.unpack_from(
            "<IIIIQQQQQIIIIQ", boot, 0)
        want = {"magic": magic, "version": ver, "sb_size": sb_size, "chunk_size": chunk_size,
                "flags": {"bits": flags}, "inodes_count": inodes,
                "inode_table_offset": itable_off, "inode_table_entries": itable_n,
                "prefetch_table_offset": prefetch_off, "prefetch_table_entries": prefetch_n,
                "blob_table_offset": blob_off, "blob_table_size": blob_size,
                "extended_blob_table_offset": ext_off, "extended_blob_table_entries": ext_n,
                "root_inode": 1}
    else:
        magic, = struct.unpack_from("<I", boot, 1024)
        root_nid, = struct.unpack_from("<H", boot, 1024 + 14)
        inodes, = struct.unpack_from("<Q", boot, 1024 + 16)
        meta_blkaddr, = struct.unpack_from("<I", boot, 1024 + 40)
        flags, bt_off, bt_size, chunk_size, ct_off, ct_size, pt_off, pt_size = struct.unpack_from(
            "<QQIIQQQI", boot, 1152)
        want = {"magic": magic, "version": 0x600, "root_nid": root_nid, "inodes_count": inodes,
                "meta_blkaddr": meta_blkaddr, "flags": {"bits": flags},
                "blob_table_offset": bt_off, "blob_table_size": bt_size, "chunk_size": chunk_size,
                "chunk_table_offset": ct_off, "chunk_table_size": ct_size,
                "prefetch_table_offset": pt_off if pt_size else 0,
                "prefetch_table_entries": pt_size // 4}
    mnt, sock = tmp_path / "mnt", tmp_path / "api.sock"
    mnt.mkdir()
    d = Daemon([str(PYNYDUSD), "--bootstrap", str(tmp / version / "bootstrap"), "--backend",
                str(tmp / version / "blobs"), "--apisock", str(sock), str(mnt)], mnt)
    try:
        wait_for(lambda: listening(sock), what="the API socket")
        code, body = _api(sock, "GET", "/api/v1/daemon/backend?mountpoint=/")
        assert code == 200, body
        info = json.loads(body)
        assert {k: info[k] for k in want} == want
        assert info["attr_timeout"]["secs"] > 0 and info["attr_timeout"]["nanos"] == 0
        assert info["magic"] == (0x52414653 if version == "v5" else 0xE0F5E1E2)
        code, body = _api(sock, "GET", "/api/v1/daemon/backend")
        assert code == 400 and b"mountpoint" in body
        code, body = _api(sock, "GET", "/api/v1/daemon/backend?mountpoint=/sub")
        assert code == 404 and json.loads(body)["code"] == "UNDEFINED"
    finally:
        d.stop()


def test_log_level_trace_logs_every_request(built, tmp_path):
    """nydusd's --log-level trace prints a line per FUSE request; so does pynydusd."""
    require_fuse()
    tmp, src = built
    d, mnt = mount_local(tmp / "v5", tmp_path, "--log-level", "trace")
    try:
        assert (mnt / "README.txt").read_bytes() == (src / "README.txt").read_bytes()
        with pytest.raises(FileNotFoundError):
            (mnt / "no-such-file").stat()
        out = d.output()
        ino = (mnt / "README.txt").stat().st_ino
        assert f"lookup(1, b'README.txt'): ino {ino} in" in out, out
        assert "lookup(1, b'no-such-file'): ino 0 in" in out  # a negative entry
        assert " read(" in out and "): ok in" in out
    finally:
        d.stop()


@pytest.mark.parametrize("in_the_way", ["nothing", "a file"])
def test_an_api_socket_that_cannot_be_bound_stops_the_daemon(built, tmp_path, in_the_way):
    """nydusd exits 1 when its API socket cannot be bound (the mount goes with it); a file that
    is not a socket where the socket goes is the user's, and stays."""
    require_fuse()
    tmp, _src = built
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if in_the_way == "a file":
        sock = tmp_path / "rootfs.meta"
        sock.write_bytes(b"precious")
    else:
        sock = tmp_path / "no/such/dir/api.sock"
    p = subprocess.run([str(PYNYDUSD), "--bootstrap", str(tmp / "v6/bootstrap"), "--backend",
                        str(tmp / "v6/blobs"), "--apisock", str(sock), str(mnt)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith(f"Error: cannot bind the API socket {sock}")
    assert "mounted at" in p.stderr and fstype_at(mnt) is None  # it was up, and is gone
    if in_the_way == "a file":
        assert sock.read_bytes() == b"precious"


@pytest.mark.parametrize("version", ["5", "6"])
def test_an_image_without_xattrs_says_so_once(tmp_path, version):
    """`--backend` serves xattrs only for an image that has some: otherwise getxattr answers
    ENOSYS, which the kernel remembers, so `ls -l` of a large tree does not ask for
    security.selinux and ACLs of every entry again and again (it did: 6x slower listings)."""
    require_fuse()
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(20):
        (src / "d" / f"f{i}").write_bytes(b"x" * i)
    build(src, tmp_path / "img", version)
    sock = tmp_path / "api.sock"
    d, mnt = mount_local(tmp_path / "img", tmp_path, "--apisock", str(sock))
    try:
        wait_for(lambda: listening(sock), what="the API socket")
        for _ in range(3):
            for i in range(20):
                with pytest.raises(OSError) as e:
                    os.getxattr(mnt / "d" / f"f{i}", "security.selinux")
                assert e.value.errno == errno.EOPNOTSUPP
        m = json.loads(_api(sock, "GET", "/api/v1/metrics")[1])
        from daemon.filestats import FOPS

        assert m["fop_hits"][FOPS.index("getxattr")] <= 1  # asked once, then never again
        assert (mnt / "d/f7").read_bytes() == b"x" * 7
    finally:
        d.stop()


def test_an_image_with_xattrs_answers_enodata_for_a_name_it_lacks(built, tmp_path):
    require_fuse()
    tmp, src = built
    d, mnt = mount_local(tmp / "v6", tmp_path)
    try:
        with pytest.raises(OSError) as e:
            os.getxattr(mnt / "README.txt", "user.nothing")
        assert e.value.errno == errno.ENODATA
        have = [p for p in src.rglob("*") if not p.is_symlink() and os.listxattr(p)]
        assert have  # (the sample tree has some, which the mount shows)
        rel = have[0].relative_to(src)
        assert sorted(os.listxattr(mnt / rel)) == sorted(os.listxattr(have[0]))
    finally:
        d.stop()


def test_a_relative_api_socket_too_long_as_an_absolute_path_still_binds(built, tmp_path):
    """nydusd binds the path given: `--apisock api.sock` from a deep directory works although
    the absolute path is longer than a socket address holds."""
    require_fuse()
    tmp, _src = built
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    d = Daemon([str(PYNYDUSD), "--bootstrap", str(tmp / "v6/bootstrap"), "--backend",
                str(tmp / "v6/blobs"), "--apisock", "api.sock", str(mnt)], mnt, cwd=str(deep))
    try:
        cwd = os.getcwd()
        os.chdir(deep)  # (the test connects by the same short name)
        try:
            wait_for(lambda: listening("api.sock"), what="the API socket")
            assert _api("api.sock", "GET", "/api/v1/daemon")[0] == 200
        finally:
            os.chdir(cwd)
        assert (mnt / "README.txt").read_bytes()
    finally:
        d.stop()
    assert not (deep / "api.sock").exists() and os.listdir(deep) == []
