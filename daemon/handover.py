"""FUSE session hand-over through a supervisor socket: hot upgrade and failover.

nydusd's choreography (nydusd-contract 6.6), with a state record of pynydusd's own: the serving
daemon *sends* its `/dev/fuse` fd and a small JSON record to the supervisor (`sendfd`); a new
daemon started with `--upgrade` *receives* them (`takeover`) and serves the same kernel
connection, so the mount (and an overlay on it) never goes away. The supervisor is a Unix socket
that listens: it stores what it is sent and sends it back to the next daemon that connects
(nydus-snapshotter's supervisor, or `python -m tools.supervisor`).

The adopted connection already finished FUSE INIT with the old daemon, and libfuse serves nothing
until it has seen an INIT. So the new session starts on one end of a socket pair, is fed a
synthetic INIT there, and the kernel fd is swapped in (dup2) while libfuse handles that INIT:
libfuse's reply then goes to the kernel, which drops it (no request has its id).
"""

from __future__ import annotations

import array
import errno
import json
import logging
import os
import socket
import struct

log = logging.getLogger(__name__)

MAGIC = "pynydusd-handover"
VERSION = 1
MAX_STATE = 32 << 10  # the record's size limit (it is a few hundred bytes)
TIMEOUT_S = 5.0

FUSE_INIT = 26
FUSE_NOTIFY_RESEND = 7
# the synthetic INIT: protocol 7.31 with the features libfuse and pyfuse3 check for
# (async read, readdirplus, max_pages); the real ones were settled with the old daemon
_INIT_FLAGS = (1 << 0) | (1 << 13) | (1 << 22)
_INIT_UNIQUE = 1 << 62  # even (odd ids are interrupts) and far beyond any id the kernel uses


class HandoverError(Exception):
    """The supervisor cannot be reached or sent something that is not a pynydusd record."""


def identity(path: str) -> list[int]:
    """What tells one bootstrap file from another: device, inode, size, mtime."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def connection_id(mountpoint: str) -> int:
    """The FUSE connection id of the mount at `mountpoint` (its /sys/fs/fuse/connections name)."""
    dev = os.stat(mountpoint).st_dev
    return os.major(dev) << 20 | os.minor(dev)


def make_state(mountpoint: str, bootstrap: str, conn_id: int) -> dict:
    """The record a new daemon checks before it serves the connection."""
    return {"magic": MAGIC, "version": VERSION, "mountpoint": mountpoint,
            "bootstrap": os.path.realpath(bootstrap), "bootstrap_id": identity(bootstrap),
            "conn_id": conn_id, "pid": os.getpid()}


def _connect(supervisor: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT_S)
    try:
        s.connect(supervisor)
    except OSError as e:
        s.close()
        raise HandoverError(f"cannot connect to the supervisor {supervisor}: {e.strerror or e}") from None
    return s


def send_fd(supervisor: str, state: dict, fd: int) -> None:
    """Send `state` and a copy of `fd` to the supervisor (the fd rides on the first bytes)."""
    data = json.dumps(state).encode()
    s = _connect(supervisor)
    try:
        sent = s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        s.sendall(data[sent:])
    except OSError as e:
        raise HandoverError(f"cannot send to the supervisor {supervisor}: {e.strerror or e}") from None
    finally:
        s.close()


def receive_fd(supervisor: str) -> tuple[dict, int]:
    """The record and fd the supervisor holds. Every other fd it passes is closed."""
    s = _connect(supervisor)
    fds: list[int] = []
    try:
        data, anc, _flags, _addr = s.recvmsg(MAX_STATE, socket.CMSG_SPACE(16 * 4))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", payload[:len(payload) - len(payload) % 4])
        while data and len(data) <= MAX_STATE:
            more = s.recv(MAX_STATE)
            if not more:
                break
            data += more
    except OSError as e:
        for fd in fds:
            os.close(fd)
        raise HandoverError(f"cannot receive from the supervisor {supervisor}: {e.strerror or e}") from None
    finally:
        s.close()
    for fd in fds[1:]:
        os.close(fd)
    try:
        state = json.loads(data) if len(data) <= MAX_STATE else None
    except (ValueError, RecursionError):
        state = None
    if not fds or not isinstance(state, dict) or state.get("magic") != MAGIC:
        if fds:
            os.close(fds[0])
        what = "no fd" if not fds else f"{len(data)} bytes that are no pynydusd record"
        raise HandoverError(f"the supervisor {supervisor} sent {what} (nothing to take over: "
                            "did the old daemon call sendfd?)")
    if state.get("version") != VERSION:
        os.close(fds[0])
        raise HandoverError(f"the supervisor holds a record of version {state.get('version')!r}; "
                            f"this pynydusd reads version {VERSION}")
    return state, fds[0]


def check_state(state: dict, mountpoint: str, bootstrap: str) -> None:
    """Refuse a record for another mountpoint or another bootstrap: its inode numbers would
    name other files."""
    if state.get("mountpoint") != mountpoint:
        raise HandoverError(f"the supervisor's session serves {state.get('mountpoint')!r}, "
                            f"not {mountpoint!r}")
    if (state.get("bootstrap") != os.path.realpath(bootstrap)
            or state.get("bootstrap_id") != identity(bootstrap)):
        raise HandoverError(f"the supervisor's session serves the bootstrap "
                            f"{state.get('bootstrap')!r} (as it was then), not {bootstrap!r}")


class Adoption:
    """A libfuse session for an already initialised kernel connection `fuse_fd`.

    Give libfuse `session_path` (it starts on a socket pair), call `feed_init()` before its loop
    runs, and `swap()` from the filesystem's init(): from then on the session reads the kernel.
    `release()` gives up instead.
    """

    def __init__(self, fuse_fd: int) -> None:
        self.fuse_fd = fuse_fd
        ours, self._peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.session_fd = ours.detach()
        self.session_path = f"/dev/fd/{self.session_fd}"
        self.swapped = False

    def feed_init(self) -> None:
        body = struct.pack("<5I", 7, 31, 128 << 10, _INIT_FLAGS, 0) + bytes(44)
        header = struct.pack("<IIQQ4I", 40 + len(body), FUSE_INIT, _INIT_UNIQUE, 0, 0, 0, 0, 0)
        self._peer.sendall(header + body)

    def swap(self) -> None:
        """Put the kernel connection where libfuse reads (called while it handles the INIT)."""
        if self.swapped:
            return
        os.dup2(self.fuse_fd, self.session_fd)
        os.close(self.fuse_fd)
        self._peer.close()
        self.fuse_fd = self.session_fd
        self.swapped = True

    def release(self) -> None:
        """Give up before serving: close the kernel fd (unless swapped in) and the pair's peer.
        The session's own fd is libfuse's to close."""
        if not self.swapped:
            os.close(self.fuse_fd)
            self.swapped = True  # nothing more to swap or release
        self._peer.close()


def redrive(fd: int, conn_id: int, policy: str) -> str:
    """Re-drive the requests the old daemon read but never answered (a crash): `resend` asks
    the kernel to queue them again (Linux 6.9+), `flush` aborts them, `none` leaves them.
    Returns what was done, for the log."""
    if policy == "none":
        return "none"
    if policy == "resend":
        try:
            os.write(fd, struct.pack("<IiQ", 16, FUSE_NOTIFY_RESEND, 0))
            return "resend"
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
    for base in ("/sys/fs/fuse/connections", "/proc/sys/fs/fuse/connections"):
        path = f"{base}/{conn_id}/{policy}"
        if os.path.exists(path):
            with open(path, "w") as f:
                f.write("1")
            return f"{policy} via {path}"
    return f"{policy} unsupported by this kernel: requests the old daemon left unanswered stay waiting"
