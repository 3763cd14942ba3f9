"""Mount hygiene: find and detach stale mounts and sockets left by a killed daemon."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
import socket
import stat
import threading
import time

log = logging.getLogger(__name__)

MNT_FORCE, MNT_DETACH = 1, 2


def mount_entry(real: str) -> tuple[str, int] | None:
    """(fstype, device as a FUSE connection id: major << 20 | minor) of the topmost mount at the
    canonical path `real`, from /proc/self/mountinfo, or None. No path lookup: that could wait
    on a FUSE mount nobody serves."""
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if _unescape(fields[4]) == real:
                    major, _, minor = fields[2].partition(":")
                    found = fields[fields.index("-") + 1], int(major) << 20 | int(minor)
    except (OSError, ValueError, IndexError):
        return None
    return found


def mounted_fstype(real: str) -> str | None:
    """The filesystem type mounted exactly at the canonical path `real`, or None."""
    entry = mount_entry(real)
    return entry[0] if entry else None


def mount_conn_id(real: str) -> int | None:
    """The FUSE connection id of the topmost mount at the canonical path `real`, or None."""
    entry = mount_entry(real)
    return entry[1] if entry else None


def set_readahead(conn_id: int, kb: int, initialized: threading.Event,
                  timeout: float = 5.0) -> bool:
    """Set the kernel's readahead window for FUSE connection `conn_id` (the read_ahead_kb of its
    backing device, "major:minor"), once `initialized` says FUSE INIT was answered: the kernel
    caps the window at what INIT negotiated when it reads the answer, so a value written before
    does not last; it is written until it stays. False, and the kernel's default kept, when sysfs
    refuses or INIT does not come."""
    path = f"/sys/class/bdi/{conn_id >> 20}:{conn_id & 0xFFFFF}/read_ahead_kb"
    page_kb = os.sysconf("SC_PAGE_SIZE") >> 10
    kb -= kb % page_kb  # the kernel keeps whole pages
    deadline = time.monotonic() + timeout
    if not initialized.wait(timeout):
        return False
    try:
        while True:
            with open(path, "w") as f:
                f.write(str(kb))
            time.sleep(0.02)
            with open(path) as f:
                if int(f.read()) == kb:
                    return True
            if time.monotonic() > deadline:
                raise OSError(errno.EAGAIN, "the kernel keeps its own value")
    except (OSError, ValueError) as e:
        log.info("cannot set the readahead window (%s: %s): the kernel's default stays",
                 path, getattr(e, "strerror", None) or e)
        return False


def canonical_mountpoint(path: str) -> str:
    """`path` made absolute and canonical, without a lookup through a mount already there: a
    FUSE mount nobody serves would block it. Its parent is resolved; when that path is a mount
    point it is canonical already (mount points are kept resolved), else it is resolved in full."""
    parent, name = os.path.split(os.path.abspath(path))
    candidate = os.path.join(os.path.realpath(parent), name) if name else os.path.realpath(parent)
    return candidate if mounted_fstype(candidate) is not None else os.path.realpath(candidate)


def _unescape(field: str) -> str:
    """A mountinfo path: the kernel writes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


_LIBC = None


def load_libc():
    """The C library, loaded once (by soname: `find_library` would run ldconfig, ~20 ms+)."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return _LIBC


def lazy_unmount(path: str, force: bool = False) -> bool:
    """umount2(path, MNT_DETACH), with MNT_FORCE also aborting a FUSE connection that another
    process (a supervisor) keeps open; True when something was detached, False if nothing was."""
    libc = load_libc()
    if libc.umount2(os.fsencode(path), MNT_DETACH | (MNT_FORCE if force else 0)) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT, errno.ENOTCONN):
        return False
    if err == errno.EPERM and os.geteuid() != 0:
        return _fusermount_unmount(path)
    raise OSError(err, f"cannot unmount {path}: {os.strerror(err)}")


def _fusermount(args: list[str], what: str, **kwargs):
    """Run fusermount3 with `args` (the CompletedProcess); OSError when it is missing, cannot
    run or hangs. `what` says what could not be done without it."""
    import shutil
    import subprocess

    exe = shutil.which(FUSERMOUNT)
    if exe is None:
        raise OSError(errno.EPERM, f"cannot {what} without root, and {FUSERMOUNT} (Debian "
                                   "package fuse3) is not installed")
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=30, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OSError(errno.EIO, f"{FUSERMOUNT} failed: {e}") from None


def _fusermount_unmount(path: str) -> bool:
    """An unprivileged lazy unmount of our own FUSE mount: fusermount3 -u -z."""
    proc = _fusermount(["-u", "-z", "--", path], f"unmount {path}")
    if proc.returncode == 0:
        return True
    if "not mounted" in proc.stderr or "not found in" in proc.stderr:
        return False
    raise OSError(errno.EPERM, f"cannot unmount {path}: {proc.stderr.strip()[:300]}")


FUSECTL = "/sys/fs/fuse/connections"


def abort_connection(conn_id: int) -> bool:
    """Abort FUSE connection `conn_id` through fusectl (mounted here if it is not): every
    request waiting on it fails at once. False when that cannot be done."""
    path = f"{FUSECTL}/{conn_id}/abort"
    if not os.path.exists(path) and os.path.isdir(FUSECTL):
        load_libc().mount(b"fusectl", FUSECTL.encode(), b"fusectl", 0, None)
    if os.path.isdir(FUSECTL) and os.listdir(FUSECTL) and not os.path.exists(path):
        return True  # fusectl lists live connections only: this one is gone already
    try:
        with open(path, "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


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


PROBE_S = 2.0  # how long a mount has to answer statfs


class MountNotAnswering(RuntimeError):
    """A FUSE mount whose connection is alive but which nobody serves (a stopped daemon, or a
    killed one whose fd a supervisor keeps for a takeover)."""


def _answers(mountpoint: str) -> bool:
    """True when statfs of `mountpoint` works, False when its FUSE connection is gone (a killed
    daemon). A mount whose daemon is alive but stopped (SIGSTOP) never answers: RuntimeError
    after PROBE_S rather than hanging the start."""
    out: dict = {}

    def probe() -> None:
        try:
            os.statvfs(mountpoint)  # never answered from the kernel's attribute cache, unlike stat
            out["ok"] = True
        except OSError as e:
            out["error"] = e

    t = threading.Thread(target=probe, name="mount-probe", daemon=True)
    t.start()
    t.join(PROBE_S)
    if t.is_alive():
        raise MountNotAnswering(f"the mount at {mountpoint} does not answer (is its daemon "
                                "stopped?)")
    e = out.get("error")
    if e is None:
        return True
    if e.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
        return False
    raise e


def clear_stale_mount(mountpoint: str, apisock: str | None) -> None:
    """Detach a dead FUSE mount left at `mountpoint` (nydusd-contract 6.5/6.6): one whose daemon
    was killed (its connection is gone). A FUSE mount that answers is some running daemon's,
    whatever its API socket does: it is left alone and reported as an error."""
    fstype = mounted_fstype(mountpoint)
    if fstype is not None and not fstype.startswith("fuse"):
        return  # e.g. a bind mount the user made: mount on top of it, as nydusd would
    if _answers(mountpoint):
        if fstype is None:
            return
        who = "its API socket answers" if apisock and socket_alive(apisock) else "it answers"
        raise RuntimeError(f"{mountpoint} already holds a live FUSE mount ({who}): "
                           "stop its daemon first")
    log.warning("detaching the stale FUSE mount at %s left by a previous daemon", mountpoint)
    lazy_unmount(mountpoint)


SUN_PATH_MAX = 108  # bytes of a Unix socket's path, its terminating NUL included


class SocketError(RuntimeError):
    """A Unix socket the daemon (or the supervisor) was told to serve cannot be bound."""


def listen_unix(sock: socket.socket, path: str, what: str, backlog: int) -> int:
    """Bind `sock` at `path` (mode 0600) and listen; return the socket file's inode (see
    `remove_socket`). The file appears only once it listens: bound under a temporary name, then
    renamed, so a client that waits for it is never refused. A stale socket there is replaced;
    any other file is the user's, and stays (refused). A path too long for a socket address is
    bound relative to the current directory, as nydusd binds the path given. Failing: a
    SocketError naming `what` and the path."""
    where = path if len(os.fsencode(path)) < SUN_PATH_MAX else os.path.relpath(path)
    tmp = os.path.join(os.path.dirname(where), f".{os.path.basename(where)}.{os.getpid()}")
    if len(os.fsencode(tmp)) >= SUN_PATH_MAX:  # no room for a longer name: bound in place
        tmp = where
    try:
        _replace_stale_socket(where)
        _replace_stale_socket(tmp)
        old = os.umask(0o177)
        try:
            sock.bind(tmp)
        finally:
            os.umask(old)
        try:
            sock.listen(backlog)
            os.chmod(tmp, 0o600)
            if tmp != where:
                os.rename(tmp, where)
            return os.lstat(where).st_ino
        except OSError:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise SocketError(f"cannot bind the {what} socket {path}: {e.strerror or e}") from None


def remove_socket(path: str, ino: int) -> None:
    """Remove the socket file `listen_unix` made, unless another process's has replaced it."""
    try:
        if os.lstat(path).st_ino == ino:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _replace_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):  # a mistyped path must not delete a user's file
        raise OSError(errno.EEXIST, "a file that is not a socket is in the way")
    os.unlink(path)


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOATIME = 1, 2, 4, 1024
MAX_READ = 1 << 20


def kernel_mount(mountpoint: str) -> int:
    """Mount FUSE at `mountpoint` directly with mount(2); return the /dev/fuse fd. Without the
    privilege for that, the setuid helper fusermount3 mounts it (as libfuse would).

    Doing this before pyfuse3 and trio are imported puts the mount in place within tens of
    milliseconds of exec. The kernel queues requests until the FUSE session (started later on
    `/dev/fd/<fd>`) answers INIT, so early callers (overlayfs) simply wait for replies.
    """
    try:
        return _mount_syscall(mountpoint)
    except OSError as e:
        if os.geteuid() == 0 or e.errno not in (errno.EPERM, errno.EACCES):
            raise
        return fusermount_mount(mountpoint)


FUSERMOUNT = "fusermount3"


def fusermount_mount(mountpoint: str) -> int:
    """Mount through fusermount3 (setuid root): it opens /dev/fuse, mounts, and passes the fd
    back over a socket named by _FUSE_COMMFD. Return that fd."""
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        opts = f"ro,nosuid,nodev,noatime,default_permissions,max_read={MAX_READ},fsname=rafs"
        proc = _fusermount(["-o", opts, "--", mountpoint], f"mount FUSE at {mountpoint}",
                           env=dict(os.environ, _FUSE_COMMFD=str(theirs.fileno())),
                           pass_fds=(theirs.fileno(),))
        theirs.close()
        if proc.returncode != 0:
            raise OSError(errno.EPERM, f"cannot mount FUSE at {mountpoint}: "
                                       f"{proc.stderr.strip()[:300] or FUSERMOUNT + ' failed'}")
        ours.settimeout(5)
        _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
        if not fds:
            raise OSError(errno.EIO, f"{FUSERMOUNT} mounted {mountpoint} but sent no fd")
        os.set_inheritable(fds[0], False)
        return fds[0]
    finally:
        ours.close()
        theirs.close()


def _mount_syscall(mountpoint: str) -> int:
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    opts = (f"fd={fd},rootmode=40000,user_id={os.geteuid()},group_id={os.getegid()},"
            f"default_permissions,max_read={MAX_READ}")
    if os.geteuid() == 0:
        opts += ",allow_other"
    libc = load_libc()
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOATIME
    if libc.mount(b"rafs", os.fsencode(mountpoint), b"fuse", flags, opts.encode()) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"cannot mount FUSE at {mountpoint}: {os.strerror(err)}")
    return fd


def raise_nofile(value: int) -> None:
    """nydusd's --rlimit-nofile: soft and hard RLIMIT_NOFILE := min(value, max(current,
    min(fs.file-max - 16384, 1000000))); 0 leaves it alone. Never fatal (logged instead)."""
    import resource

    if value <= 0:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/file-max") as f:
            file_max = int(f.read())
    except (OSError, ValueError):
        file_max = 1 << 20
    target = min(value, max(soft, min(file_max - 16384, 1_000_000)))
    for limits in ((target, target), (min(target, hard), hard)):  # the second without privilege
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return
        except (OSError, ValueError) as e:
            error = e
    log.warning("cannot set RLIMIT_NOFILE to %d: %s", target, error)
