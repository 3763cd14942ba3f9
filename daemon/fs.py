"""The FUSE operations: translate kernel requests into image lookups and storage reads.

This is the only place where errors become errno values. Nothing but `pyfuse3.FUSEError`
leaves a handler: storage failures answer EIO, malformed image data is logged and answers EIO,
and anything unexpected is logged once with its context and answered EIO.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable

import pyfuse3
import trio

import rafs
from rafs.model import SB_HAS_XATTR

from .filestats import FOPS, FileStats, fuse_ino, image_ino
from .logs import TRACE
from .metrics import read_latency_bucket, size_bucket
from .storage_errors import StorageError, WouldBlock

log = logging.getLogger(__name__)

FOREVER_S = 365 * 24 * 3600.0  # the image never changes under the mount
STATFS_BSIZE = 512
NAME_MAX = 255


# FUSE opcodes of the operations, as /api/v1/metrics/inflight reports them
OPCODES = {"lookup": 1, "forget": 2, "getattr": 3, "readlink": 5, "open": 14, "read": 15,
           "statfs": 17, "release": 18, "getxattr": 22, "listxattr": 23, "opendir": 27,
           "readdir": 28, "releasedir": 29, "access": 34, "batch_forget": 42, "readdirplus": 44}


def handler(name: str):
    """Wrap an operation: count it, note it in flight, and turn every failure into a FUSEError."""
    opcode = OPCODES.get(name, 0)

    def wrap(fn):
        @functools.wraps(fn)
        async def op(self, *args):
            self.hits[name] += 1
            self.serial += 1
            unique = self.serial
            first = args[0] if args and isinstance(args[0], int) else 0
            start = time.monotonic()
            self.inflight[unique] = (first, opcode, time.time())
            result = None
            ok = False
            try:
                result = await fn(self, *args)
                ok = True
                return result
            except pyfuse3.FUSEError as e:
                if e.errno not in (errno.ENOENT, errno.ENODATA, errno.ENOSYS):
                    self.errors[name] += 1
                raise
            except StorageError as e:
                self.errors[name] += 1
                log.error("%s%r: storage error: %s", name, args[:2], e)
                raise pyfuse3.FUSEError(errno.EIO) from None
            except rafs.RafsError as e:
                self.errors[name] += 1
                log.error("%s%r: bad image data: %s", name, args[:2], e)
                raise pyfuse3.FUSEError(errno.EIO) from None
            except Exception:
                self.errors[name] += 1
                log.exception("%s%r: unexpected error", name, args[:2])
                raise pyfuse3.FUSEError(errno.EIO) from None
            finally:
                del self.inflight[unique]
                us = (time.monotonic() - start) * 1e6
                self.latency_us[name] += int(us)
                if opcode == 15:  # read
                    self.read_latency[read_latency_bucket(us)] += 1
                if first and self.recording:
                    self.file_stats.record(name, first, ok,
                                           len(result) if ok and opcode == 15 else 0)
                if log.isEnabledFor(TRACE):  # --log-level trace: one line per request
                    log.log(TRACE, "%s%r: %s in %d us", name,
                            tuple(a for a in args if isinstance(a, int | bytes | str)),
                            "failed" if not ok else f"ino {result.st_ino}"
                            if hasattr(result, "st_ino") else "ok", us)
        return op
    return wrap


def _readonly(*_args):
    async def op(self, *args):
        raise pyfuse3.FUSEError(errno.EROFS)
    return op


_S64_MAX = (1 << 63) - 1


class RafsOperations(pyfuse3.Operations):
    """Read-only filesystem over one RAFS image; collaborators are passed in."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, image: rafs.Image, store, *, enable_xattr: bool = False,
                 thread_num: int = 4, mount_time: float | None = None,
                 on_init: Callable[[], None] | None = None,
                 file_stats: FileStats | None = None) -> None:
        super().__init__()
        self.on_init = on_init  # run at FUSE INIT, before any other request (see handover)
        self.init_done = threading.Event()
        self.image = image
        self.store = store
        self.xattr_enabled = enable_xattr or bool(image.flags & SB_HAS_XATTR)
        self.limiter = trio.CapacityLimiter(max(1, thread_num))
        self.mount_ns = int((mount_time or time.time()) * 1e9)
        self.root = image.root_ino
        self.hits: Counter = Counter()
        self.errors: Counter = Counter()
        self.data_read = 0
        self.nr_opens = 0  # files open now
        self.serial = 0
        self.latency_us: Counter = Counter()
        self.read_latency = [0] * 8
        self.read_sizes = [0] * 8
        self.inflight: dict[int, tuple[int, int, float]] = {}  # unique -> (inode, opcode, start)
        self.file_stats = file_stats or FileStats()
        self.recording = self.file_stats.enabled  # (checked on every request)

    def init(self) -> None:
        """FUSE INIT: pyfuse3 calls this synchronously, before it serves any other request."""
        if self.on_init is not None:
            self.on_init()
        self.init_done.set()

    @property
    def initialized(self) -> bool:
        return self.init_done.is_set()

    # -- inode numbers: the kernel's root is 1; swap it with the image's root ----------------

    def _to_image(self, ino: int) -> int:
        return image_ino(ino, self.root)

    def _to_fuse(self, ino: int) -> int:
        return fuse_ino(ino, self.root)

    def attrs(self, inode: rafs.Inode) -> pyfuse3.EntryAttributes:
        """EntryAttributes with nydusd's policies (root 0755, mtime 0 -> mount time)."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = self._to_fuse(inode.ino)
        mode = inode.mode
        if inode.ino == self.root:
            mode = stat.S_IFMT(mode) | 0o755
        a.st_mode = mode
        a.st_nlink = inode.nlink
        a.st_uid, a.st_gid = inode.uid, inode.gid
        a.st_rdev = inode.rdev
        if inode.size > _S64_MAX or inode.blocks > _S64_MAX:
            raise rafs.RafsError("file size does not fit in off_t", structure="inode",
                                 field="i_size", value=inode.size)
        a.st_size = inode.size
        a.st_blksize = 4096
        a.st_blocks = inode.blocks
        ns = inode.mtime * 1_000_000_000 + inode.mtime_nsec if inode.mtime else self.mount_ns
        # far future and far past: clamped to what a 64-bit count of nanoseconds holds
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = max(min(ns, _S64_MAX), -_S64_MAX - 1)
        a.entry_timeout = a.attr_timeout = FOREVER_S
        return a

    # -- metadata ----------------------------------------------------------------------------

    @handler("lookup")
    async def lookup(self, parent_inode, name, ctx=None):
        if len(name) > NAME_MAX:  # (statfs says so; the kernel checks only its own 1024)
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        inode = self.image.lookup(self._to_image(parent_inode), bytes(name))
        if inode is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = FOREVER_S
            return negative
        return self.attrs(inode)

    @handler("getattr")
    async def getattr(self, inode, ctx=None):
        return self.attrs(self.image.getattr(self._to_image(inode)))

    @handler("readlink")
    async def readlink(self, inode, ctx):
        return self.image.readlink(self._to_image(inode))

    @handler("opendir")
    async def opendir(self, inode, ctx):
        if not self.image.getattr(self._to_image(inode)).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @handler("readdir")
    async def readdir(self, fh, start_id, token):
        # `.` and `..` first, at positions 1 and 2, as nydusd lists them; the image's entries
        # after them (the kernel makes no dentries of the two, so their inodes cost nothing)
        ino = self._to_image(fh)
        if start_id < 1 and not pyfuse3.readdir_reply(token, b".", self.attrs(
                self.image.getattr(ino)), 1):
            return
        if start_id < 2:
            try:
                parent = self.image.getattr(self.image.parent(ino))
            except rafs.RafsError as e:  # a broken `..` costs the entry, not the listing
                log.warning("directory %d: no '..' in its listing: %s", ino, e)
                parent = None
            if parent is not None and not pyfuse3.readdir_reply(token, b"..", self.attrs(parent),
                                                                 2):
                return
        for name, inode, pos in self.image.readdir(ino, max(start_id - 2, 0)):
            if not pyfuse3.readdir_reply(token, name, self.attrs(inode), pos + 2):
                break

    async def releasedir(self, fh):
        return None

    @handler("open")
    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if not self.image.getattr(self._to_image(inode)).is_reg:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self.nr_opens += 1
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    @handler("release")
    async def release(self, fh):
        # nydusd's nr_opens: files open now (not below 0: after a takeover, files the old daemon
        # opened are released here)
        self.nr_opens = max(self.nr_opens - 1, 0)
        return None

    @handler("read")
    async def read(self, fh, off, size):
        ino = self._to_image(fh)
        pieces = self.image.chunks(ino, off, size)
        if not pieces:
            return b""
        data = None
        if self.store.can_read_now(pieces):
            try:
                data = self.store.read(pieces, ino, off, inline=True)
            except WouldBlock:  # a chunk left memory meanwhile: not on the FUSE loop, then
                pass
        if data is None:  # the network, or another thread's fetch: in a worker thread
            # abandon_on_cancel: on shutdown, a read stuck on a dead server must not hold up
            # the exit (its thread is a daemon thread, left to time out on its own)
            data = await trio.to_thread.run_sync(self.store.read, pieces, ino, off,
                                                 limiter=self.limiter, abandon_on_cancel=True)
        self.data_read += len(data)
        self.read_sizes[size_bucket(size)] += 1
        return data

    @handler("statfs")
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = STATFS_BSIZE
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = self.image.inode_count
        s.f_ffree = s.f_favail = 0
        s.f_namemax = NAME_MAX
        return s

    @handler("access")
    async def access(self, inode, mode, ctx):
        return not mode & os.W_OK

    @handler("getxattr")
    async def getxattr(self, inode, name, ctx):
        if not self.xattr_enabled:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        value = self.image.xattrs(self._to_image(inode)).get(bytes(name))
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    @handler("listxattr")
    async def listxattr(self, inode, ctx):
        if not self.xattr_enabled:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return list(self.image.xattrs(self._to_image(inode)))

    async def forget(self, inode_list):
        self.hits["forget"] += 1

    # -- everything that would modify the image ---------------------------------------------

    setattr = _readonly()
    mknod = _readonly()
    mkdir = _readonly()
    unlink = _readonly()
    rmdir = _readonly()
    symlink = _readonly()
    rename = _readonly()
    link = _readonly()
    write = _readonly()
    create = _readonly()
    setxattr = _readonly()
    removexattr = _readonly()

    def inflight_ops(self) -> list[dict]:
        """Operations being served now (nydusd's /api/v1/metrics/inflight), oldest first."""
        now = dict(self.inflight)  # one atomic copy: the FUSE loop changes it meanwhile
        return [{"inode": ino, "opcode": opcode, "unique": unique, "timestamp_secs": int(start)}
                for unique, (ino, opcode, start) in sorted(now.items())]

    def fs_metrics(self) -> dict:
        """nydusd's FsIoStats shape (api/v1/metrics)."""
        fs = self.file_stats
        return {"files_account_enabled": fs.iostats_files, "access_pattern_enabled": fs.access_pattern,
                "record_latest_read_files_enabled": fs.latest_read_files, "measure_latency": True,
                "id": "/", "nr_opens": self.nr_opens, "data_read": self.data_read,
                "block_count_read": list(self.read_sizes),
                "fop_hits": [self.hits[f] for f in FOPS],
                "fop_errors": [self.errors[f] for f in FOPS],
                "fop_cumulative_latency_total": [self.latency_us[f] for f in FOPS],
                "read_latency_dist": list(self.read_latency)}
