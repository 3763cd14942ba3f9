"""Per-file access records: nydusd's `iostats_files`, `access_pattern` and `latest_read_files`,
served by GET /api/v1/metrics/files and /api/v1/metrics/pattern. They say which files a workload
read, in what order and how much: what a prefetch list is made from (`pynydus-image
prefetch-list`). Inode numbers are the ones the mount reports (st_ino); see `fuse_ino`.
"""

from __future__ import annotations

import threading
import time

from .metrics import size_bucket

FOPS = ("getattr", "readlink", "open", "release", "read", "statfs", "getxattr", "listxattr",
        "opendir", "lookup", "readdir", "readdirplus", "access", "forget", "batch_forget")
_FOP_INDEX = {name: i for i, name in enumerate(FOPS)}
_READ = _FOP_INDEX["read"]
FUSE_ROOT = 1  # the kernel's root inode number
EXPORT_BATCH = 1000  # counters copied per hold of the lock


def fuse_ino(image_ino: int, root: int) -> int:
    """The inode number the mount reports for an image inode: the image's root and inode 1 swap
    places, as the kernel's root is 1."""
    return FUSE_ROOT if image_ino == root else (root if image_ino == FUSE_ROOT else image_ino)


def image_ino(fuse: int, root: int) -> int:
    """The image inode behind an inode number the mount reports (the inverse of `fuse_ino`)."""
    return root if fuse == FUSE_ROOT else (FUSE_ROOT if fuse == root else fuse)


class FileStats:
    """What the enabled records hold; `record` is called for every operation on an inode."""

    def __init__(self, iostats_files: bool = False, access_pattern: bool = False,
                 latest_read_files: bool = False) -> None:
        self.iostats_files = iostats_files
        self.access_pattern = access_pattern
        self.latest_read_files = latest_read_files
        self.lock = threading.Lock()  # the FUSE loop records, the API thread exports
        self.counters: dict[int, dict] = {}  # ino -> nydusd's per-file counters
        self.patterns: dict[int, list[int]] = {}  # ino -> [nr_read, first read (ns since epoch)]
        self.latest: set[int] = set()  # inodes read successfully since the last export

    @property
    def enabled(self) -> bool:
        return self.iostats_files or self.access_pattern or self.latest_read_files

    def record(self, fop: str, ino: int, ok: bool, data_read: int = 0) -> None:
        """One operation `fop` on inode `ino` (as the mount reports it); `data_read` is the size
        of a successful read's answer."""
        index = _FOP_INDEX.get(fop)
        if index is None:
            return
        with self.lock:
            if self.iostats_files:
                c = self.counters.get(ino)
                if c is None:
                    c = self.counters[ino] = {"total_fops": 0, "data_read": 0,
                                              "block_count_read": [0] * 8,
                                              "fop_hits": [0] * len(FOPS),
                                              "fop_errors": [0] * len(FOPS)}
                if ok:
                    c["total_fops"] += 1
                    c["fop_hits"][index] += 1
                    if index == _READ:
                        c["data_read"] += data_read
                        c["block_count_read"][size_bucket(data_read)] += 1
                else:
                    c["fop_errors"][index] += 1
            if index != _READ:
                return
            if self.access_pattern:
                p = self.patterns.get(ino)
                if p is None:
                    self.patterns[ino] = [1, time.time_ns()]
                else:
                    p[0] += 1
            if self.latest_read_files and ok:
                self.latest.add(ino)

    def files(self) -> dict[str, dict]:
        """nydusd's /api/v1/metrics/files: per-inode counters keyed by inode number (empty
        unless iostats_files is on). Copied a batch at a time, so that the FUSE loop recording
        operations never waits long for the lock."""
        with self.lock:
            inos = sorted(self.counters)
        out = {}
        for start in range(0, len(inos), EXPORT_BATCH):
            with self.lock:
                for ino in inos[start:start + EXPORT_BATCH]:
                    c = self.counters[ino]
                    out[str(ino)] = {**c, "block_count_read": list(c["block_count_read"]),
                                     "fop_hits": list(c["fop_hits"]),
                                     "fop_errors": list(c["fop_errors"])}
        return out

    def drain_latest(self) -> list[list[int]]:
        """nydusd's /api/v1/metrics/files?latest=true: the inodes read since the last call, as
        runs [first, last] (or [ino] for a run of one), in order; the record starts afresh."""
        with self.lock:
            inos, self.latest = sorted(self.latest), set()
        runs: list[list[int]] = []
        for ino in inos:
            if runs and runs[-1][-1] == ino - 1:
                runs[-1][1:] = [ino]
            else:
                runs.append([ino])
        return runs

    def pattern(self) -> list[dict]:
        """nydusd's /api/v1/metrics/pattern: every file read, with its read count and first
        read time, in the order of first reads."""
        with self.lock:
            rows = sorted(self.patterns.items(), key=lambda kv: (kv[1][1], kv[0]))
        return [{"ino": ino, "nr_read": n, "first_access_time_secs": first // 1_000_000_000,
                 "first_access_time_nanos": first % 1_000_000_000}
                for ino, (n, first) in rows]
