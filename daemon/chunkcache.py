"""Persistent cache of decompressed chunks ("blobcache") in `work_dir`.

Layout (all under `<work_dir>/pynydusd/`, a directory of our own so that the Rust nydusd's cache
files, which live directly in work_dir, are never read or written):

    <blob_id>.data   sparse file, blob's uncompressed size; chunk i's decompressed bytes at its
                     uncompressed offset
    <blob_id>.ready  32-byte header (magic b"PYNYDUSD-READY-1", u32 chunk count, u32 0,
                     u64 uncompressed size) followed by one byte per chunk: 1 = cached and valid

File names are built only from validated blob ids (64 lowercase hex). A chunk's ready byte
reaches the file only after its data has been written and made durable (fdatasync), so neither a
process killed at any moment (kill -9) nor a power loss leaves a ready chunk whose data is not
all there; a header that does not match the image resets both files. The ready bytes of newly
written chunks are committed in groups by a background thread (every COMMIT_S seconds, sooner
once COMMIT_CHUNKS are waiting, and on close), so no read waits for an fdatasync; until then they
are ready in memory only, and a crash merely costs fetching them again. `durable=True` commits
each chunk as it is written.
The files are shared by every image whose daemon uses this work_dir, and an image may lie about a
blob's layout: nothing here says the bytes are right for the image reading them (the fetcher
checks each chunk's digest), only that a ready chunk was written whole.
A full disk (ENOSPC/EDQUOT) or any other write error (EIO, a read-only remount) never marks a
chunk ready: the data is served uncached, with one warning. A blob whose cache files cannot be set
up (a full disk at start, a chunk count beyond MAX_CHUNKS) is cached in memory only.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
import threading
import time

from rafs import BlobInfo, ChunkInfo, is_valid_blob_id

log = logging.getLogger(__name__)

MAGIC = b"PYNYDUSD-READY-1"
_HEADER = struct.Struct("<16sIIQ")
HEADER_SIZE = _HEADER.size
_FULL = (errno.ENOSPC, errno.EDQUOT)
MAX_CHUNKS = 1 << 24  # ready bytes held in memory per blob (v6 chunk indexes have 24 bits)
COMMIT_S = 1.0  # the committer's period
COMMIT_CHUNKS = 256  # written chunks that wake it sooner
LOCK_WAIT_S = 2.0  # how long opening a blob's files waits for a gc removing them
OPEN_ATTEMPTS = 3
TOUCH_S = 3600.0  # a running daemon marks its blobs used this often (and at close)


def cache_root(work_dir: str) -> str:
    """The directory pynydusd keeps its cache files in, under a nydusd `work_dir` (its own, so
    that the Rust nydusd's files there are never read or written)."""
    return os.path.join(work_dir, "pynydusd")


def open_regular(name: str, flags: int, dir_fd: int | None = None) -> int:
    """An fd of `name` opened with `flags`, never through a symlink (ELOOP) and never blocking
    on a FIFO; OSError(EINVAL) when it is not a regular file. Names in the cache directory may
    have been planted there."""
    fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{name} is not a regular file")
    return fd


def _same_file(fd: int, name: str, dir_fd: int) -> bool:
    """Whether `name` in directory `dir_fd` still names the file open as `fd`."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


class BlobCacheFile:
    """The cache files of one blob."""

    def __init__(self, root: str, blob: BlobInfo, dir_fd: int) -> None:
        """The files of `blob` in the directory open as `dir_fd` (`root` is its path, for
        messages): never looked up by path again, so that the directory checked is the one
        used."""
        if not is_valid_blob_id(blob.blob_id):
            raise ValueError(f"refusing to cache blob id {blob.blob_id[:80]!r}")
        self.blob = blob
        self.count = blob.chunk_count
        base = os.path.join(root, blob.blob_id)
        self.data_fd = self.ready_fd = -1
        try:
            self._open(base, blob.blob_id, dir_fd)
            header = _HEADER.pack(MAGIC, self.count, 0, blob.uncompressed_size)
            if os.pread(self.ready_fd, HEADER_SIZE, 0) != header or \
                    os.fstat(self.ready_fd).st_size != HEADER_SIZE + self.count or \
                    os.fstat(self.data_fd).st_size != blob.uncompressed_size:
                self._reset(header)
            self.ready = bytearray(os.pread(self.ready_fd, self.count, HEADER_SIZE))
            if len(self.ready) != self.count:
                raise OSError(errno.EIO, f"{base}.ready is shorter than its {self.count} chunks")
        except BaseException:
            self.close()
            raise
        self.full_warned = False
        self.broken = False  # a sync or a read failed: this blob is no longer cached
        self.committing = threading.Lock()  # one commit at a time
        self.pending: set[int] = set()  # written chunks whose ready bytes are not committed

    def _open(self, base: str, name: str, dir_fd: int) -> None:
        """Open (creating) both files and take the shared lock on .ready that tells
        `pynydusd-cache gc` they are in use. gc removes a pair under the exclusive lock, so files
        opened just before it did are found unlinked once the lock is ours: open them afresh."""
        for _attempt in range(OPEN_ATTEMPTS):
            self.close()
            self.data_fd = open_regular(name + ".data", os.O_RDWR | os.O_CREAT, dir_fd)
            self.ready_fd = open_regular(name + ".ready", os.O_RDWR | os.O_CREAT, dir_fd)
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(self.ready_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:  # gc is removing this pair: it takes milliseconds
                    if time.monotonic() > deadline:
                        raise OSError(errno.EBUSY, f"{base}.ready stays locked") from None
                    time.sleep(0.01)
            if all(_same_file(fd, name + ext, dir_fd) for fd, ext in (
                    (self.data_fd, ".data"), (self.ready_fd, ".ready"))):
                self.touch()
                return
        raise OSError(errno.EBUSY, f"{base}.ready keeps being replaced")

    def _reset(self, header: bytes) -> None:
        os.ftruncate(self.ready_fd, 0)
        os.ftruncate(self.data_fd, 0)
        os.ftruncate(self.data_fd, self.blob.uncompressed_size)
        table = header + bytes(self.count)
        written = os.pwrite(self.ready_fd, table, 0)
        if written != len(table):  # a filling disk
            os.ftruncate(self.ready_fd, 0)
            raise OSError(errno.ENOSPC, f"short write ({written} of {len(table)} bytes)")

    def usable(self, chunk: ChunkInfo) -> bool:
        return (chunk.chunk_index < self.count
                and chunk.uncompressed_offset + chunk.uncompressed_size <= self.blob.uncompressed_size)

    def get(self, chunk: ChunkInfo) -> bytes | None:
        """The cached data of `chunk`, or None when it is not ready."""
        if self.broken or not self.usable(chunk) or not self.ready[chunk.chunk_index]:
            return None
        try:
            data = os.pread(self.data_fd, chunk.uncompressed_size, chunk.uncompressed_offset)
        except OSError as e:  # a failing disk: fetch the chunk again instead, and not from here
            self._warn(e)
            self.broken = True
            return None
        return data if len(data) == chunk.uncompressed_size else None

    def put(self, chunk: ChunkInfo, data: bytes) -> bool:
        """Store `data` and mark the chunk ready (committed to disk later, see `commit`); False
        (and nothing marked) when the write fails: a full disk, an I/O error."""
        if self.broken or not self.usable(chunk) or self.ready[chunk.chunk_index]:
            return False
        try:
            written = os.pwrite(self.data_fd, data, chunk.uncompressed_offset)
            if written != len(data):  # a filling disk can write part of it without an error
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
        except OSError as e:
            self._warn(e)
            return False
        self.ready[chunk.chunk_index] = 1
        self.pending.add(chunk.chunk_index)
        return True

    def commit(self, lock: threading.Lock) -> None:
        """Make the written chunks' data durable, then write their ready bytes (in runs). The
        fdatasync runs without `lock` (the one put and forget are called under), so writers go
        on meanwhile. A chunk forgotten or written again since is left to a later commit. If the
        sync fails, the chunks are not ready after all (they will be fetched again). Commits of
        one file run one at a time: a sync that follows a failed one can succeed without the data
        being there (the kernel reports a writeback error once)."""
        with self.committing:
            self._commit(lock)

    def _commit(self, lock: threading.Lock) -> None:
        with lock:
            pending, self.pending = self.pending, set()
        if not pending or self.broken:
            return
        try:
            os.fdatasync(self.data_fd)
        except OSError as e:  # the data may not be on disk, nor that of chunks written since
            # (a writeback error is reported once): none of them is ready, and this blob is
            # served uncached from now on
            with lock:
                self._warn(e)
                self.broken = True
                for i in pending | self.pending:
                    self.ready[i] = 0
                self.pending = set()
            return
        with lock:
            marks = sorted(i for i in pending if self.ready[i] and i not in self.pending)
            if not marks:  # all forgotten (or written again) meanwhile
                return
            try:
                start = prev = marks[0]
                for i in marks[1:] + [-1]:  # contiguous chunks in one write
                    if i != prev + 1:
                        os.pwrite(self.ready_fd, b"\1" * (prev + 1 - start), HEADER_SIZE + start)
                        start = i
                    prev = i
            except OSError as e:  # not marked on disk: fetched again after a restart
                self._warn(e)

    def _warn(self, e: OSError) -> None:
        if not self.full_warned:
            log.warning("%s (%s): serving blob %s uncached",
                        "cache disk full" if e.errno in _FULL else "cache write failed",
                        e.strerror, self.blob.blob_id)
            self.full_warned = True

    def forget(self, chunk: ChunkInfo) -> None:
        """Mark the chunk not ready (its data proved bad), so that put() writes it again."""
        if self.is_ready(chunk):
            self.ready[chunk.chunk_index] = 0
            if chunk.chunk_index in self.pending:  # not on disk yet
                self.pending.discard(chunk.chunk_index)
                return
            try:
                os.pwrite(self.ready_fd, b"\0", HEADER_SIZE + chunk.chunk_index)
            except OSError as e:  # ready again after a restart: checked again then
                log.warning("cannot unmark bad cached chunk %d of blob %s: %s",
                            chunk.chunk_index, self.blob.blob_id, e.strerror)

    def is_ready(self, chunk: ChunkInfo) -> bool:
        return not self.broken and self.usable(chunk) and bool(self.ready[chunk.chunk_index])

    def ready_count(self) -> int:
        return 0 if self.broken else self.count - self.ready.count(0)

    def touch(self) -> None:
        """Mark the blob as used now (the .ready file's mtime; see daemon.cachegc)."""
        if self.ready_fd >= 0:
            try:
                os.utime(self.ready_fd)
            except OSError:
                pass

    def close(self) -> None:
        for fd in (self.data_fd, self.ready_fd):
            if fd >= 0:
                os.close(fd)
        self.data_fd = self.ready_fd = -1


def _private_dir(path: str) -> int:
    """An fd of directory `path`, created (mode 0700) if missing, after checking that it is ours
    and that no one else can write to it (others could plant files or links in it): raises
    OSError otherwise. The check is made on the fd the files are then opened through, so the
    directory cannot be swapped in between; `path` itself must not be a symlink."""
    os.makedirs(os.path.dirname(path), exist_ok=True)  # the work_dir
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise OSError(errno.EPERM, f"{path} must belong to uid {os.geteuid()} and be writable "
                                   "by it alone")
    return fd


class ChunkCache:
    """All blob cache files of one image in `<work_dir>/pynydusd/`."""

    def __init__(self, work_dir: str, blobs: list[BlobInfo], durable: bool = False) -> None:
        self.root = cache_root(work_dir)
        self.files: dict[int, BlobCacheFile] = {}
        self.lock = threading.Lock()
        self.durable = durable
        self.wake = threading.Event()
        self.closing = False
        self.committer: threading.Thread | None = None
        self.dir_fd = -1
        try:
            self.dir_fd = _private_dir(self.root)
        except OSError as e:
            log.warning("cannot use the cache directory %s (%s): caching in memory only",
                        self.root, e.strerror or e)
            blobs = []
        for blob in blobs:
            if not (blob.chunk_count and blob.uncompressed_size and is_valid_blob_id(blob.blob_id)):
                log.info("blob %d (%s) has no chunk count or size: cached in memory only",
                         blob.index, blob.blob_id[:80])
            elif blob.chunk_count > MAX_CHUNKS:
                log.warning("blob %s claims %d chunks (over %d): cached in memory only",
                            blob.blob_id, blob.chunk_count, MAX_CHUNKS)
            else:
                try:
                    self.files[blob.index] = BlobCacheFile(self.root, blob, self.dir_fd)
                except OSError as e:
                    log.warning("cannot set up the cache files of blob %s (%s): cached in "
                                "memory only", blob.blob_id, e.strerror or e)
        if self.files:  # it commits written chunks, and marks the blobs used while the image is
            self._start_committer()  # mounted (even if nothing is ever written)

    def get(self, chunk: ChunkInfo) -> bytes | None:
        f = self.files.get(chunk.blob_index)
        return f.get(chunk) if f else None

    def put(self, chunk: ChunkInfo, data: bytes) -> bool:
        f = self.files.get(chunk.blob_index)
        if f is None:
            return False
        with self.lock:
            if not f.put(chunk, data):
                return False
            waiting = len(f.pending)
        if self.durable:  # (also when no committer thread could be started)
            f.commit(self.lock)
        elif waiting >= COMMIT_CHUNKS:
            self.wake.set()
        return True

    def _start_committer(self) -> None:
        committer = threading.Thread(target=self._commit_loop, daemon=True, name="cache-commit")
        try:
            committer.start()
            self.committer = committer
        except RuntimeError as e:  # no thread to be had: commit as we go instead
            log.warning("no cache commit thread (%s): committing every chunk", e)
            self.durable = True

    def _commit_loop(self) -> None:
        touched = time.monotonic()
        while not self.closing:
            self.wake.wait(COMMIT_S)
            self.wake.clear()
            if not self.closing:
                self.commit()
                if time.monotonic() - touched > TOUCH_S:  # still in use: say so to gc
                    touched = time.monotonic()
                    self.touch()

    def touch(self) -> None:
        """Mark every blob of the image as used now."""
        with self.lock:
            for f in self.files.values():
                f.touch()

    def forget(self, chunk: ChunkInfo) -> None:
        f = self.files.get(chunk.blob_index)
        if f is not None:
            with self.lock:
                f.forget(chunk)

    def is_ready(self, chunk: ChunkInfo) -> bool:
        f = self.files.get(chunk.blob_index)
        return f.is_ready(chunk) if f else False

    def commit(self) -> None:
        """Commit every blob's written chunks now (see BlobCacheFile.commit)."""
        for f in list(self.files.values()):
            try:
                f.commit(self.lock)
            except Exception:  # never let the committer die
                log.exception("committing cached chunks of blob %s failed", f.blob.blob_id)

    def all_ready(self) -> bool:
        return bool(self.files) and all(f.ready_count() == f.count for f in self.files.values())

    def underlying_files(self) -> list[str]:
        return [os.path.join(self.root, f.blob.blob_id + ".data") for f in self.files.values()]

    def close(self) -> None:
        """Commit what is written and close the files."""
        self.closing = True
        self.wake.set()
        if self.committer is not None:
            self.committer.join()
        self.commit()
        self.touch()  # its last use is now, not when it was opened
        with self.lock:
            for f in self.files.values():
                f.close()
            self.files.clear()
            if self.dir_fd >= 0:
                os.close(self.dir_fd)
                self.dir_fd = -1
