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
import select
import socket
import stat
import struct
import time

log = logging.getLogger(__name__)

MAGIC = "pynydusd-handover"
VERSION = 1
MAX_STATE = 32 << 10  # the record's size limit (it is a few hundred bytes)
TIMEOUT_S = 5.0  # for the whole exchange with the supervisor
FUSE_DEV = os.makedev(10, 229)  # /dev/fuse
RECEIVER_HELLO = b"\0"  # a record never starts with it

FUSE_INIT = 26
FUSE_NOTIFY_RESEND = 7
# the synthetic INIT: protocol 7.31 with the features libfuse and pyfuse3 check for
# (async read, readdirplus, max_pages); the real ones were settled with the old daemon
_INIT_FLAGS = (1 << 0) | (1 << 13) | (1 << 22)
_INIT_UNIQUE = 1 << 62  # even (odd ids are interrupts) and far beyond any id the kernel uses


class HandoverError(Exception):
    """The supervisor cannot be reached or sent something that is not a pynydusd record."""


def connection_id(mountpoint: str) -> int:
    """The FUSE connection id of the mount at `mountpoint` (its /sys/fs/fuse/connections name)."""
    dev = os.stat(mountpoint).st_dev
    return os.major(dev) << 20 | os.minor(dev)


def libfuse_version() -> int:
    """The libfuse the FUSE session runs on (its INIT reply settled the request sizes)."""
    import ctypes

    try:
        return int(ctypes.CDLL("libfuse3.so.3").fuse_version())
    except (OSError, AttributeError):
        return 0


def make_state(mountpoint: str, bootstrap: str, bootstrap_id: list[int] | None,
               conn_id: int) -> dict:
    """The record a new daemon checks before it serves the connection. `bootstrap_id` is the
    identity of the file the daemon opened (rafs Image.file_id), not of what the path names now."""
    return {"magic": MAGIC, "version": VERSION, "mountpoint": mountpoint,
            "bootstrap": os.path.realpath(bootstrap), "bootstrap_id": bootstrap_id,
            "conn_id": conn_id, "libfuse": libfuse_version(), "pid": os.getpid()}


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
    """The record and fd the supervisor holds (within TIMEOUT_S in all). Every other fd it
    passes is closed."""
    deadline = time.monotonic() + TIMEOUT_S
    s = _connect(supervisor)
    try:  # "I am receiving": pynydusd-supervisor answers at once instead of waiting to see
        s.sendall(RECEIVER_HELLO)  # whether we send (a supervisor that never reads ignores it)
    except OSError:
        pass

    def wait() -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise OSError(errno.ETIMEDOUT, "the supervisor took too long")
        s.settimeout(left)

    try:
        data, fds = read_record(s, wait)
    except OSError as e:
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


def read_record(s: socket.socket, before_read=lambda: None) -> tuple[bytes, list[int]]:
    """A record sent on `s`: its bytes to the end (at most just over MAX_STATE) and the fds
    that came with its first bytes (not inheritable). A reset after the first bytes ends it,
    as a close does. On an error the fds are closed."""
    fds: list[int] = []
    try:
        before_read()
        data, anc, _flags, _addr = s.recvmsg(MAX_STATE, socket.CMSG_SPACE(16 * 4))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", payload[:len(payload) - len(payload) % 4])
        for fd in fds:
            os.set_inheritable(fd, False)
        while data and len(data) <= MAX_STATE:
            before_read()
            try:
                more = s.recv(MAX_STATE)
            except ConnectionResetError:  # closed without reading what we wrote: the end too
                break
            if not more:
                break
            data += more
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return data, fds


def check_state(state: dict, fd: int, mountpoint: str, mounted: int | None,
                bootstrap: str, bootstrap_id: list[int] | None, sender_gone: bool = False) -> int:
    """Refuse what this daemon must not serve; return the connection id. The fd must be a
    live /dev/fuse connection, the very one mounted at `mountpoint` now (`mounted`: its id
    from mountinfo), for the same bootstrap (else inode numbers would name other files) and
    the same libfuse (which settled the request sizes with the kernel). `sender_gone`: refuse
    while the daemon that sent the record still runs (a restart that found the mount unserved:
    that daemon may only be stopped)."""
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != FUSE_DEV:
        raise HandoverError("the supervisor's fd is not /dev/fuse")
    events = select.poll()
    events.register(fd, select.POLLIN)
    if any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, ev in events.poll(0)):
        raise HandoverError("the FUSE connection the supervisor holds is gone (aborted or "
                            "unmounted): a stale record")
    conn_id = state.get("conn_id")
    if type(conn_id) is not int:
        raise HandoverError(f"the record's conn_id {str(conn_id)[:40]!r} is not a number")
    if state.get("mountpoint") != mountpoint:
        raise HandoverError(f"the supervisor's session serves {str(state.get('mountpoint'))[:200]!r}"
                            f", not {mountpoint!r}")
    if conn_id != mounted:
        raise HandoverError(f"the record is for FUSE connection {conn_id}, but {mountpoint} holds "
                            f"{'nothing' if mounted is None else f'connection {mounted}'}: "
                            "a stale record")
    if (bootstrap_id is None or state.get("bootstrap") != os.path.realpath(bootstrap)
            or state.get("bootstrap_id") != bootstrap_id):
        raise HandoverError(f"the supervisor's session serves the bootstrap "
                            f"{str(state.get('bootstrap'))[:200]!r} (as it was then), "
                            f"not {bootstrap!r}")
    pid = state.get("pid")
    if sender_gone and type(pid) is int and pid != os.getpid() and _is_pynydusd(pid):
        raise HandoverError(f"the daemon that sent this record (pid {pid}) still runs: stop it "
                            "(exit) or kill it first; two daemons must not serve one connection")
    if state.get("libfuse") != libfuse_version():
        raise HandoverError(f"the old daemon ran libfuse {state.get('libfuse')!r}, this one "
                            f"{libfuse_version()}: hand over between the same builds")
    return conn_id


def _is_pynydusd(pid: int) -> bool:
    """Whether process `pid` runs pynydusd (a zombie or another program does not count)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rpartition(b")")[2].split()[:1] == [b"Z"]:
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(b"pynydusd" in a or a.endswith(b"nydusd") or a == b"daemon.cli" for a in argv[:3])


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
        os.dup2(self.fuse_fd, self.session_fd, inheritable=False)
        os.close(self.fuse_fd)
        self._peer.close()
        self.fuse_fd = self.session_fd
        self.swapped = True

    def abandon(self) -> None:
        """Undo the constructor after a failure: the socket pair only (`fuse_fd` stays the
        caller's)."""
        self._peer.close()
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
