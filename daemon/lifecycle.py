"""Mount hygiene: find and detach stale mounts and sockets left by a killed daemon."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import socket

log = logging.getLogger(__name__)

MNT_DETACH = 2


def mounted_fstype(path: str) -> str | None:
    """The filesystem type mounted exactly at `path` (from /proc/self/mountinfo), or None."""
    real = os.path.realpath(path)
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                mnt = fields[4].replace("\\040", " ")
                if mnt == real:
                    found = fields[sep + 1]
    except OSError:
        return None
    return found


def lazy_unmount(path: str) -> bool:
    """umount2(path, MNT_DETACH); True when something was detached, False if nothing was there."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.umount2(os.fsencode(path), MNT_DETACH) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT, errno.ENOTCONN):
        return False
    raise OSError(err, f"cannot unmount {path}: {os.strerror(err)}")


def socket_alive(path: str) -> bool:
    """True when something accepts connections on the Unix socket `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def clear_stale_mount(mountpoint: str, apisock: str | None) -> None:
    """Detach a dead FUSE mount left at `mountpoint` (nydusd-contract 6.5, recommended divergence).

    A mount whose daemon still answers (its API socket accepts, or stat works without an API
    socket to ask) is left alone and reported as an error.
    """
    fstype = mounted_fstype(mountpoint)
    dead = False
    try:
        os.stat(mountpoint)
    except OSError as e:
        if e.errno not in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            raise
        dead = True
    if fstype is None and not dead:
        return
    if not (fstype or "").startswith("fuse") and not dead:
        return  # e.g. a bind mount the user made: mount on top of it, as nydusd would
    if not dead and apisock and socket_alive(apisock):
        raise RuntimeError(f"{mountpoint} is served by a running daemon (its API socket answers)")
    if not dead and not apisock:
        raise RuntimeError(f"{mountpoint} already holds a live FUSE mount")
    log.warning("detaching the stale FUSE mount at %s left by a previous daemon", mountpoint)
    lazy_unmount(mountpoint)


def replace_socket_file(path: str) -> None:
    """Remove a stale socket file at `path` (nothing listens on it)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
