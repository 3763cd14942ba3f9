"""Run the daemon in a subprocess on a real FUSE mount; always unmount and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

PYNYDUSD = Path(sys.executable).parent / "pynydusd"
BLOB_SERVER = Path(sys.executable).parent / "pynydus-blob-server"


def require_fuse() -> None:
    """Skip unless /dev/fuse is usable by root."""
    if os.geteuid() != 0:
        pytest.skip("FUSE mount tests need root")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing")


def mount_at(path: str | Path) -> tuple[str, str] | None:
    """(mount id, fstype) of the topmost mount at `path`, or None. Only the parent is resolved:
    a lookup through a FUSE mount nobody serves would block."""
    parent, name = os.path.split(os.path.abspath(path))
    real = os.path.join(os.path.realpath(parent), name)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == real:
                found = (fields[0], fields[fields.index("-") + 1])
    return found


def fstype_at(path: str | Path) -> str | None:
    m = mount_at(path)
    return m[1] if m else None


def wait_for(pred, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    """A daemon process with its mount; `stop()` is safe to call more than once."""

    def __init__(self, argv: list[str], mountpoint: Path, cwd: str | None = None,
                 wait: bool = True) -> None:
        self.mountpoint = Path(mountpoint)
        self.log = open(self.mountpoint.parent / f"{self.mountpoint.name}.{id(self)}.log", "w+b")
        before = mount_at(self.mountpoint)
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)
        if wait:
            def ready() -> bool:
                if self.proc.poll() is not None:
                    return True
                now = mount_at(self.mountpoint)
                if now is None or now[1] != "fuse":
                    return False
                if before is None:
                    return True
                if b"mounted at" not in self._raw():
                    return False
                try:  # replacing a dead mount (mount ids get reused): wait until it answers
                    os.stat(self.mountpoint)
                    return True
                except OSError:
                    return False
            try:
                wait_for(ready, what="the FUSE mount")
            except AssertionError:
                self.stop()
                raise
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.output()}")

    def _raw(self) -> bytes:
        self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> tuple[int, float]:
        """Send `sig`; return (exit code, seconds it took)."""
        t = time.monotonic()
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        return rc, time.monotonic() - t

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if fstype_at(self.mountpoint):  # umount2 here: a forked child could block closing an
            from daemon.lifecycle import lazy_unmount  # inherited fd of an unserved mount

            try:
                lazy_unmount(str(self.mountpoint), force=True)
            except OSError:
                pass
        self.log.close()

    def assert_clean_log(self) -> None:
        out = self.output()
        assert "Traceback" not in out and " ERROR " not in out, out


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class BlobServerProc:
    """pynydus-blob-server on 127.0.0.1 (a free port) serving `blobsdir`."""

    def __init__(self, blobsdir: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([str(BLOB_SERVER), "--blobsdir", str(blobsdir), "--address",
                                      "127.0.0.1", "--port", str(self.port), "-v"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self._up, what="the blob server")

    def _up(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def requests(self) -> list[str]:
        """The request lines the server logged (after stop())."""
        return [line for line in self.stderr.splitlines() if '"GET ' in line or '"HEAD ' in line]

    def stop(self) -> None:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=5)
        self.stderr = err.decode(errors="replace")


def listening(sock: str | Path) -> bool:
    """A Unix socket accepts connections (its file appears at bind, before listen)."""
    with socket.socket(socket.AF_UNIX) as c:
        return c.connect_ex(str(sock)) == 0


def api_call(sock: str | Path, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request to a daemon's API socket: (status, body)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(str(sock))
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
              f"Connection: close\r\n\r\n".encode() + body)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


def files_of(src: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every non-empty regular file under src."""
    return {str(p.relative_to(src)): p.read_bytes() for p in sorted(src.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.stat().st_size}


def read_every_file_through_a_mount(img: Path, src: Path, cfg: Path, tmp_path: Path) -> str:
    """Mount image `img` with `--config cfg`, check that every file of `src` reads back the same
    through the mount and that the daemon logged no error; return its log."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    d = Daemon([str(PYNYDUSD), "--bootstrap", str(img / "bootstrap"), "--config", str(cfg),
                str(mnt)], mnt)
    try:
        for rel, data in files_of(src).items():
            assert (mnt / rel).read_bytes() == data, rel
        d.assert_clean_log()
        return d.output()
    finally:
        d.stop()
