"""What the chunk cache under a work_dir holds, and removing what is not needed (`pynydusd-cache`).

Each blob is cached as a pair of files, `<blob_id>.data` and `<blob_id>.ready` (see chunkcache). A
daemon holds a shared flock on the .ready file of every blob it caches for as long as it runs, and
touches it when it opens it; chunks landing write it too. So a pair whose .ready can be locked
exclusively is in use by no daemon, and the .ready file's mtime is when the blob was last used.
Removal happens under that exclusive lock: a daemon opening the pair meanwhile waits for the lock,
finds its files unlinked and creates new ones. Only pairs named by a valid blob id are touched;
anything else in the directory is left alone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass

from rafs import is_valid_blob_id

from .chunkcache import HEADER_SIZE, MAGIC, cache_root, open_regular


@dataclass
class CachedBlob:
    """One blob's cache files."""

    blob_id: str
    disk_bytes: int  # allocated on disk (the data file is sparse: only chunks written count)
    chunks: int  # chunk count its header records (0 when the header is not ours)
    ready: int  # chunks marked ready on disk
    last_used: float  # mtime of the .ready file
    in_use: bool  # a running daemon holds it


def _open_regular(path: str, create: bool = False) -> int | None:
    """An fd of the regular file `path` (see chunkcache.open_regular), or None when it is
    missing or is something else (a link, a FIFO, a directory)."""
    try:
        return open_regular(path, os.O_RDONLY | (os.O_CREAT if create else 0))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EINVAL):  # a symlink, not a regular file
            return None
        raise


def _locked(path: str, create: bool = False) -> int | None:
    """An fd of `path` holding the exclusive lock, or None when a daemon holds it (or it is
    missing, or not a regular file)."""
    fd = _open_regular(path, create)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise


def _ids(root: str) -> list[str]:
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted({n[:-len(ext)] for n in names for ext in (".data", ".ready")
                   if n.endswith(ext) and is_valid_blob_id(n[:-len(ext)])})


def scan(work_dir: str) -> list[CachedBlob]:
    """Every blob cached under work_dir, least recently used first."""
    root = cache_root(work_dir)
    out = []
    for blob_id in _ids(root):
        base = os.path.join(root, blob_id)
        disk, last, chunks, ready, in_use = 0, 0.0, 0, 0, False
        for ext in (".data", ".ready"):
            try:
                st = os.lstat(base + ext)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):  # links and the like are not ours: not counted
                disk += st.st_blocks * 512
                if ext == ".ready":
                    last = st.st_mtime
        try:
            fd = _open_regular(base + ".ready")
        except OSError:  # unreadable (not ours to judge): counted as in use, so never removed
            fd, in_use = None, True
        if fd is not None:
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    in_use = True
                head = os.pread(fd, HEADER_SIZE, 0)
                if head[:16] == MAGIC and len(head) == HEADER_SIZE:
                    chunks = int.from_bytes(head[16:20], "little")
                    table = os.pread(fd, chunks, HEADER_SIZE)
                    ready = len(table) - table.count(0)
            finally:
                os.close(fd)
        out.append(CachedBlob(blob_id, disk, chunks, ready, last, in_use))
    return sorted(out, key=lambda b: (b.last_used, b.blob_id))


def remove(work_dir: str, blob_id: str) -> bool:
    """Remove one blob's cache files unless a daemon uses them; whether they were removed."""
    if not is_valid_blob_id(blob_id):
        raise ValueError(f"not a blob id: {blob_id[:80]!r}")
    base = os.path.join(cache_root(work_dir), blob_id)
    # (a .data without its .ready gets one here, so that a daemon opening the pair meanwhile
    # waits for the lock and then finds both unlinked)
    try:
        lone = stat.S_ISREG(os.lstat(base + ".data").st_mode) and not os.path.lexists(
            base + ".ready")
    except FileNotFoundError:
        lone = False
    fd = _locked(base + ".ready", create=lone)
    if fd is None:
        return False  # in use, or not files of ours
    try:
        for ext in (".data", ".ready"):
            try:
                os.unlink(base + ext)
            except FileNotFoundError:
                pass
            except OSError:
                if lone:  # leave no .ready of ours behind
                    os.unlink(base + ".ready")
                raise
    finally:
        os.close(fd)
    return True


def collect(work_dir: str, keep: Iterable[str] = (), unused_for_s: float | None = None,
            max_bytes: int | None = None, dry_run: bool = False,
            errors: list[str] | None = None) -> list[CachedBlob]:
    """Remove cached blobs that no daemon uses and `keep` does not name: with `unused_for_s`,
    only those unused for that long; with `max_bytes`, only as many as it takes (least recently
    used first) to bring the cache down to that size. Returns what was (or, with dry_run, would
    be) removed; a blob that cannot be removed (a read-only disk, no permission) is skipped and
    said in `errors`."""
    keep = set(keep)
    blobs = scan(work_dir)
    total = sum(b.disk_bytes for b in blobs)
    now = time.time()
    removed = []
    for b in blobs:  # least recently used first
        if max_bytes is not None and total <= max_bytes:
            break
        if b.in_use or b.blob_id in keep:
            continue
        if unused_for_s is not None and now - b.last_used < unused_for_s:
            continue
        try:
            gone = dry_run or remove(work_dir, b.blob_id)
        except OSError as e:
            if errors is not None:
                errors.append(f"{b.blob_id}: {e.strerror or e}")
            continue
        if gone:
            removed.append(b)
            total -= b.disk_bytes
    return removed
