"""Per-file records through a real mount (iostats_files, access_pattern, latest_read_files): what
the API reports after a workload's reads, and the prefetch list `pynydus-image prefetch-list` makes
of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from daemon.filestats import FOPS
from tests.mountutil import PYNYDUSD, Daemon, api_call, listening, require_fuse, wait_for

IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"
CONFIG = """
version = 2
[backend]
type = "localfs"
[backend.localfs]
dir = "{blobs}"
[cache]
type = ""
[rafs]
iostats_files = true
access_pattern = true
latest_read_files = true
"""


def _get(sock: Path, path: str):
    status, body = api_call(sock, "GET", path)
    assert status == 200, (path, status, body)
    return json.loads(body)


def _workload(src: Path) -> list[str]:
    """Three files of the sample tree in a read order that is not the tree's."""
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*")
                   if p.is_file() and not p.is_symlink() and p.stat().st_size > 0)
    return [files[-1], files[0], files[len(files) // 2]]


def test_recorded_reads_give_the_files_and_their_order(sample_v6, tmp_path):
    require_fuse()
    image, src = sample_v6
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(blobs=image / "blobs"))
    mnt, sock = tmp_path / "mnt", tmp_path / "api.sock"
    mnt.mkdir()
    d = Daemon([str(PYNYDUSD), "--bootstrap", str(image / "bootstrap"), "--config", str(config),
                "--apisock", str(sock), "--no-prefetch", str(mnt)], mnt)
    try:
        wait_for(lambda: listening(sock), what="the API socket")
        flags = _get(sock, "/api/v1/metrics")
        assert (flags["files_account_enabled"], flags["access_pattern_enabled"],
                flags["record_latest_read_files_enabled"]) == (True, True, True)
        order = _workload(src)
        inos = {}
        for rel in order:
            assert (mnt / rel).read_bytes() == (src / rel).read_bytes()
            inos[rel] = os.stat(mnt / rel).st_ino

        pattern = _get(sock, "/api/v1/metrics/pattern")
        assert [p["ino"] for p in pattern] == [inos[rel] for rel in order]
        assert all(p["nr_read"] >= 1 and 0 <= p["first_access_time_nanos"] < 10**9
                   for p in pattern)
        firsts = [p["first_access_time_secs"] * 10**9 + p["first_access_time_nanos"]
                  for p in pattern]
        assert 0 < time.time_ns() - firsts[0] < 60 * 10**9  # wall-clock time of the first read

        runs = _get(sock, "/api/v1/metrics/files?latest=true")
        named = {i for run in runs for i in range(run[0], run[-1] + 1)}
        assert named == set(inos.values())
        assert _get(sock, "/api/v1/metrics/files?latest=true") == []  # drained
        (mnt / order[1]).read_bytes()  # cached by the kernel: no read reaches the daemon
        os.stat(mnt / order[0])

        files = _get(sock, "/api/v1/metrics/files")
        for rel, ino in inos.items():
            c = files[str(ino)]
            assert c["data_read"] == (src / rel).stat().st_size
            assert c["fop_hits"][FOPS.index("read")] >= 1
            assert c["fop_hits"][FOPS.index("open")] >= 1
            assert sum(c["block_count_read"]) == c["fop_hits"][FOPS.index("read")]

        record = tmp_path / "pattern.json"
        record.write_text(json.dumps(pattern))
        listed = subprocess.run([str(IMAGE_TOOL), "prefetch-list", str(image / "bootstrap"),
                                 str(record)], check=True, capture_output=True, text=True).stdout
        assert listed.splitlines() == ["/" + rel for rel in order]
        from_runs = subprocess.run([str(IMAGE_TOOL), "prefetch-list", str(image / "bootstrap")],
                                   input=json.dumps(runs), check=True, capture_output=True,
                                   text=True).stdout
        assert sorted(from_runs.splitlines()) == sorted("/" + rel for rel in order)
    finally:
        d.stop()


def test_records_are_off_unless_configured(sample_v6, tmp_path):
    require_fuse()
    image, src = sample_v6
    mnt, sock = tmp_path / "mnt", tmp_path / "api.sock"
    mnt.mkdir()
    d = Daemon([str(PYNYDUSD), "--bootstrap", str(image / "bootstrap"), "--backend",
                str(image / "blobs"), "--apisock", str(sock), "--no-prefetch", str(mnt)], mnt)
    try:
        wait_for(lambda: listening(sock), what="the API socket")
        for rel in _workload(src):
            (mnt / rel).read_bytes()
        flags = _get(sock, "/api/v1/metrics")
        assert not (flags["files_account_enabled"] or flags["access_pattern_enabled"]
                    or flags["record_latest_read_files_enabled"])
        assert flags["fop_hits"][FOPS.index("read")] >= 3
        assert _get(sock, "/api/v1/metrics/pattern") == []
        assert _get(sock, "/api/v1/metrics/files") == {}
        assert _get(sock, "/api/v1/metrics/files?latest=true") == []
    finally:
        d.stop()


def test_prefetch_list_refuses_what_is_no_record(sample_v6, tmp_path):
    image, _src = sample_v6
    huge = subprocess.run([str(IMAGE_TOOL), "prefetch-list", str(image / "bootstrap")],
                          input=b"[[0, 4000000000000]]", capture_output=True, timeout=60)
    assert huge.returncode == 0 and huge.stdout.count(b"\n") > 3  # every file, at no cost
    for junk in ('{"ino": 1}', '[["x"]]', "[[5, 2]]", "not json"):
        r = subprocess.run([str(IMAGE_TOOL), "prefetch-list", str(image / "bootstrap")],
                           input=junk, capture_output=True, text=True)
        assert r.returncode == 1 and r.stderr.startswith("Error:"), (junk, r.stderr)
