"""Hot upgrade and failover: a new daemon takes over the FUSE connection through a supervisor
(nydusd's sendfd, exit, takeover, start), so the mount and the overlay on it never go away."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.faultserver import FaultServer
from tests.mountutil import PYNYDUSD, Daemon, api_call, fstype_at, listening, require_fuse, wait_for
from tests.treeutil import source_manifest

SUPERVISOR = Path(sys.executable).parent / "pynydusd-supervisor"


@pytest.fixture
def image(sample_v6) -> tuple[Path, Path]:
    return sample_v6


class Supervisor:
    """pynydusd-supervisor on a socket under `where`."""

    def __init__(self, where: Path) -> None:
        self.path = where / "supervisor.sock"
        self.log = open(where / "supervisor.log", "w+b")
        self.proc = subprocess.Popen([str(SUPERVISOR), str(self.path)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_for(self.path.is_socket, what="the supervisor socket")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)
        self.log.close()


def argv(image: Path, mnt: Path, sock: Path, sup: Path, *extra: str) -> list[str]:
    return [str(PYNYDUSD), "--bootstrap", str(image / "bootstrap"), "--apisock", str(sock),
            "--id", "test", "--supervisor", str(sup), "--no-prefetch", *extra, str(mnt)]


def new_daemon(img: Path, mnt: Path, sock: Path, sup: Path, *extra: str) -> Daemon:
    """A daemon started with --upgrade (local blobs unless `extra` names a backend), once its API
    socket is up: state INIT."""
    backend = () if "--backend" in extra else ("--backend", str(img / "blobs"))
    d = Daemon(argv(img, mnt, sock, sup, *backend, *extra, "--upgrade"), mnt, wait=False)
    wait_for(lambda: listening(sock), what="the new daemon's API socket")
    return d


def stop_all(sup, *daemons: Daemon | None) -> None:
    """The supervisor first (the connection must not outlive the daemons: no unserved reads),
    then the daemons, newest first."""
    sup.stop()
    for d in daemons:
        if d is not None:
            d.stop()


def state(sock: Path) -> str:
    code, body = api_call(sock, "GET", "/api/v1/daemon")
    assert code == 200, body
    return json.loads(body)["state"]


def reader(path: Path) -> tuple[threading.Thread, dict]:
    """Read `path` whole in a thread; the result lands in the dict ("data" or "error")."""
    out: dict = {}

    def run() -> None:
        try:
            out["data"] = path.read_bytes()
        except OSError as e:
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def overlay(lower: Path, where: Path) -> Path:
    merged = where / "merged"
    for d in ("upper", "work", "merged"):
        (where / d).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={where / 'upper'},workdir={where / 'work'}",
                    str(merged)], check=True)
    return merged


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["upgrade", "failover"])
def test_a_new_daemon_takes_over_the_mount(image, tmp_path, how):
    """upgrade: the old daemon sends its fd and exits; failover: it sends its fd and is killed
    with SIGKILL. Either way the mount and the overlay on it stay, a read made while no daemon
    serves waits instead of failing, and the new daemon serves the same tree."""
    require_fuse()
    img, src = image
    sup = Supervisor(tmp_path)
    mnt, a_sock, b_sock = tmp_path / "mnt", tmp_path / "a.sock", tmp_path / "b.sock"
    mnt.mkdir()
    a = Daemon(argv(img, mnt, a_sock, sup.path, "--backend", str(img / "blobs")), mnt)
    b = merged = None
    try:
        merged = overlay(mnt, tmp_path)
        assert (merged / "README.txt").read_bytes() == (src / "README.txt").read_bytes()
        wait_for(lambda: listening(a_sock), what="the API socket")
        assert api_call(a_sock, "PUT", "/api/v1/daemon/fuse/sendfd")[0] == 204
        b = new_daemon(img, mnt, b_sock, sup.path)
        assert state(b_sock) == "INIT"
        assert api_call(b_sock, "PUT", "/api/v1/daemon/start")[0] == 400  # nothing taken over
        assert api_call(b_sock, "GET", "/api/v1/metrics")[0] == 503
        assert api_call(a_sock, "PUT", "/api/v1/daemon/fuse/takeover")[0] == 400  # RUNNING
        if how == "upgrade":
            assert api_call(a_sock, "PUT", "/api/v1/daemon/exit")[0] == 204
            assert a.proc.wait(timeout=10) == 0
            assert "stays for the next daemon" in a.output()
        else:
            a.proc.kill()
            a.proc.wait()
        assert fstype_at(mnt) == "fuse" and fstype_at(merged) == "overlay"
        t, out = reader(merged / "data/random-300k.bin")  # never read before: not in page cache
        time.sleep(0.5)
        assert t.is_alive() and not out, out  # waiting for a daemon, not failing
        assert api_call(b_sock, "PUT", "/api/v1/daemon/fuse/takeover")[0] == 204
        assert state(b_sock) == "READY"
        assert api_call(b_sock, "PUT", "/api/v1/daemon/fuse/takeover")[0] == 400  # once only
        assert api_call(b_sock, "PUT", "/api/v1/daemon/start")[0] == 204
        t.join(10)
        assert out.get("data") == (src / "data/random-300k.bin").read_bytes(), out
        wait_for(lambda: state(b_sock) == "RUNNING", what="RUNNING")
        got, want = source_manifest(mnt), source_manifest(src)
        got[b"/"] = want[b"/"] = None
        assert got == want
        assert (merged / "data/text-1m.txt").read_bytes() == (src / "data/text-1m.txt").read_bytes()
        assert api_call(b_sock, "GET", "/api/v1/metrics")[0] == 200
        b.assert_clean_log()
        subprocess.run(["umount", str(merged)], check=True)
        merged = None
        rc, _secs = b.terminate()
        assert rc == 0 and fstype_at(mnt) is None  # SIGTERM: unmounts, as always
    finally:
        if merged is not None:
            subprocess.run(["umount", "-l", str(merged)], check=False)
        stop_all(sup, b, a)


@pytest.mark.timeout(120)
def test_failover_redrives_the_read_the_killed_daemon_held(image, tmp_path):
    """A daemon killed while it waits for the backend leaves that read unanswered; the new
    daemon has the kernel resend it (FUSE_NOTIFY_RESEND) and answers it."""
    require_fuse()
    img, src = image
    server = FaultServer(img / "blobs", delay_s=1.0)
    sup = Supervisor(tmp_path)
    mnt, a_sock, b_sock = tmp_path / "mnt", tmp_path / "a.sock", tmp_path / "b.sock"
    mnt.mkdir()
    url = f"http://127.0.0.1:{server.port}/repo"
    extra = ("--backend", url, "--cache-dir", str(tmp_path / "cache"))
    a = Daemon(argv(img, mnt, a_sock, sup.path, *extra), mnt)
    b = None
    try:
        wait_for(lambda: listening(a_sock), what="the API socket")
        assert api_call(a_sock, "PUT", "/api/v1/daemon/fuse/sendfd")[0] == 204
        b = new_daemon(img, mnt, b_sock, sup.path, *extra)
        t, out = reader(mnt / "data/exactly-64k.bin")
        time.sleep(0.5)  # the old daemon has asked the server, which answers after 1 s
        assert t.is_alive() and not server.served
        a.proc.send_signal(signal.SIGKILL)  # mid-fetch: the read is the dead daemon's
        a.proc.wait()
        wait_for(lambda: listening(b_sock), what="the new daemon's API socket")
        server.delay_s = 0
        assert api_call(b_sock, "PUT", "/api/v1/daemon/fuse/takeover")[0] == 204
        assert api_call(b_sock, "PUT", "/api/v1/daemon/start")[0] == 204
        if "resend unsupported" in b.output():
            pytest.skip("this kernel has no FUSE_NOTIFY_RESEND (Linux 6.9+): the killed "
                        "daemon's read cannot be re-driven")
        assert "re-drive: resend" in b.output()
        t.join(15)
        assert out.get("data") == (src / "data/exactly-64k.bin").read_bytes(), out
    finally:
        stop_all(sup, b, a)
        server.stop()


def test_takeover_refuses_another_image_and_leaves_the_mount(image, tmp_path):
    """A record for another bootstrap would map inode numbers to the wrong files: refused with
    a clear error; the mount keeps working for its own daemon; the refused daemon stops clean."""
    require_fuse()
    img, src = image
    sup = Supervisor(tmp_path)
    mnt, a_sock, b_sock = tmp_path / "mnt", tmp_path / "a.sock", tmp_path / "b.sock"
    mnt.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "bootstrap").write_bytes((img / "bootstrap").read_bytes())  # same bytes, other file
    (other / "blobs").symlink_to(img / "blobs")
    a = Daemon(argv(img, mnt, a_sock, sup.path, "--backend", str(img / "blobs")), mnt)
    b = None
    try:
        wait_for(lambda: listening(a_sock), what="the API socket")
        assert api_call(a_sock, "PUT", "/api/v1/daemon/fuse/sendfd")[0] == 204
        b = new_daemon(other, mnt, b_sock, sup.path, "--backend", str(img / "blobs"))
        code, body = api_call(b_sock, "PUT", "/api/v1/daemon/fuse/takeover")
        assert code == 500 and b"not '" + str(other / "bootstrap").encode() in body, body
        assert state(b_sock) == "INIT"
        assert (mnt / "README.txt").read_bytes() == (src / "README.txt").read_bytes()
        rc, _ = b.terminate()
        assert rc == 0 and fstype_at(mnt) == "fuse"  # INIT: it never touched the mount
        assert (mnt / "etc/hostname").exists() == (src / "etc/hostname").exists()
    finally:
        stop_all(sup, b, a)


def test_handover_needs_a_supervisor(image, tmp_path):
    """Without --supervisor, sendfd and takeover are refused (400); with one that does not
    listen, sendfd fails (500) and the daemon serves on; --upgrade needs both sockets."""
    require_fuse()
    img, src = image
    mnt, sock = tmp_path / "mnt", tmp_path / "a.sock"
    mnt.mkdir()
    base = [str(PYNYDUSD), "--bootstrap", str(img / "bootstrap"), "--backend", str(img / "blobs"),
            "--apisock", str(sock)]
    r = subprocess.run([*base, "--upgrade", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 2 and "--upgrade needs --apisock and --supervisor" in r.stderr
    a = Daemon([*base, "--id", "x", "--supervisor", str(tmp_path / "nobody.sock"), str(mnt)], mnt)
    try:
        wait_for(lambda: listening(sock), what="the API socket")
        code, body = api_call(sock, "PUT", "/api/v1/daemon/fuse/sendfd")
        assert code == 500 and b"cannot connect to the supervisor" in body, body
        assert (mnt / "README.txt").read_bytes() == (src / "README.txt").read_bytes()
        assert os.path.ismount(mnt)
    finally:
        a.stop()


def start_old(img: Path, tmp_path: Path, sup: Path, *extra: str) -> tuple[Daemon, Path, Path]:
    """A serving daemon with an API socket, after sendfd."""
    mnt, sock = tmp_path / "mnt", tmp_path / "a.sock"
    mnt.mkdir(exist_ok=True)
    a = Daemon(argv(img, mnt, sock, sup, "--backend", str(img / "blobs"), *extra), mnt)
    wait_for(lambda: listening(sock), what="the API socket")
    assert api_call(sock, "PUT", "/api/v1/daemon/fuse/sendfd")[0] == 204
    return a, mnt, sock


def take_over(b_sock: Path) -> None:
    assert api_call(b_sock, "PUT", "/api/v1/daemon/fuse/takeover")[0] == 204
    assert api_call(b_sock, "PUT", "/api/v1/daemon/start")[0] == 204
    wait_for(lambda: state(b_sock) == "RUNNING", what="RUNNING")


@pytest.mark.timeout(120)
def test_a_taken_over_daemon_hands_over_again(image, tmp_path):
    """sendfd from a daemon that took over (even before it starts serving) gives the supervisor
    the kernel connection, so a crash of that daemon is survived too."""
    require_fuse()
    img, src = image
    sup = Supervisor(tmp_path)
    a, mnt, _ = start_old(img, tmp_path, sup.path)
    daemons = [a]
    try:
        a.proc.kill()
        a.proc.wait()
        b_sock = tmp_path / "b.sock"
        b = new_daemon(img, mnt, b_sock, sup.path)
        daemons.append(b)
        assert api_call(b_sock, "PUT", "/api/v1/daemon/fuse/takeover")[0] == 204
        assert api_call(b_sock, "PUT", "/api/v1/daemon/fuse/sendfd")[0] == 204  # READY
        assert api_call(b_sock, "PUT", "/api/v1/daemon/start")[0] == 204
        assert (mnt / "README.txt").read_bytes() == (src / "README.txt").read_bytes()
        b.proc.kill()
        b.proc.wait()
        c_sock = tmp_path / "c.sock"
        c = new_daemon(img, mnt, c_sock, sup.path)
        daemons.append(c)
        take_over(c_sock)
        assert (mnt / "data/dup-a.bin").read_bytes() == (src / "data/dup-a.bin").read_bytes()
    finally:
        stop_all(sup, *reversed(daemons))


@pytest.mark.timeout(120)
def test_exit_finishes_the_reads_it_took_before_it_goes(image, tmp_path):
    """A read the old daemon is serving (slow backend) when `exit` comes is finished by the old
    daemon before exit returns, and the rest waits for the new one: no re-drive is needed
    (kernels before 6.9 have none)."""
    require_fuse()
    img, src = image
    server = FaultServer(img / "blobs", delay_s=1.5)
    sup = Supervisor(tmp_path)
    url = f"http://127.0.0.1:{server.port}/repo"
    extra = ("--backend", url, "--cache-dir", str(tmp_path / "cache"))
    mnt, a_sock, b_sock = tmp_path / "mnt", tmp_path / "a.sock", tmp_path / "b.sock"
    mnt.mkdir()
    a = Daemon(argv(img, mnt, a_sock, sup.path, *extra), mnt)
    b = None
    try:
        wait_for(lambda: listening(a_sock), what="the API socket")
        assert api_call(a_sock, "PUT", "/api/v1/daemon/fuse/sendfd")[0] == 204
        # no re-drive: what the old daemon took it answers, what it did not take waits
        # (started now: no fork while a read waits on the mount)
        b = new_daemon(img, mnt, b_sock, sup.path, *extra, "--failover-policy", "none")
        t, out = reader(mnt / "data/exactly-64k.bin")
        time.sleep(0.5)  # the old daemon waits for the server
        assert api_call(a_sock, "PUT", "/api/v1/daemon/exit")[0] == 204
        assert "FUSE session ended" in a.output()  # exit answers once reading has stopped
        assert a.proc.wait(timeout=10) == 0 and fstype_at(mnt) == "fuse"
        server.delay_s = 0
        take_over(b_sock)
        t.join(10)
        assert out.get("data") == (src / "data/exactly-64k.bin").read_bytes(), out
        assert (mnt / "data/dup-b.bin").read_bytes() == (src / "data/dup-b.bin").read_bytes()
    finally:
        stop_all(sup, b, a)
        server.stop()


@pytest.mark.timeout(120)
def test_a_stale_record_is_refused_and_the_live_mount_kept(image, tmp_path):
    """The supervisor still holds the fd of a daemon that was stopped (SIGTERM unmounts and,
    since a supervisor holds the connection, aborts it): reads through the overlay fail at once
    instead of hanging. A fresh daemon mounts; a takeover of the stale record is refused, and
    the refused daemon's stop leaves the fresh mount alone."""
    require_fuse()
    img, src = image
    sup = Supervisor(tmp_path)
    a, mnt, _ = start_old(img, tmp_path, sup.path)
    daemons = [a]
    merged = overlay(mnt, tmp_path)
    try:
        assert (merged / "README.txt").read_bytes() == (src / "README.txt").read_bytes()
        rc, secs = a.terminate()
        assert rc == 0 and fstype_at(mnt) is None
        t, out = reader(merged / "data/random-300k.bin")
        t.join(5)
        assert not t.is_alive() and isinstance(out.get("error"), OSError), out
        subprocess.run(["umount", str(merged)], check=True)
        merged = None
        b = Daemon(argv(img, mnt, tmp_path / "b.sock", sup.path, "--backend", str(img / "blobs")),
                   mnt)
        daemons.append(b)
        c_sock = tmp_path / "c.sock"
        c = new_daemon(img, mnt, c_sock, sup.path)
        daemons.append(c)
        code, body = api_call(c_sock, "PUT", "/api/v1/daemon/fuse/takeover")
        assert code == 500 and b"stale record" in body, body
        assert c.terminate()[0] == 0
        assert fstype_at(mnt) == "fuse"
        assert (mnt / "data/dup-a.bin").read_bytes() == (src / "data/dup-a.bin").read_bytes()
    finally:
        if merged is not None:
            subprocess.run(["umount", "-l", str(merged)], check=False)
        stop_all(sup, *reversed(daemons))


@pytest.mark.timeout(120)
def test_a_restart_waits_for_a_takeover_while_the_supervisor_holds_the_mount(image, tmp_path):
    """A daemon killed after sendfd, restarted with the same command line (no --upgrade): the
    mount does not answer but a supervisor listens, so it waits in INIT for a takeover, as
    nydusd does, instead of failing."""
    require_fuse()
    img, src = image
    sup = Supervisor(tmp_path)
    a, mnt, sock = start_old(img, tmp_path, sup.path)
    daemons = [a]
    try:
        a.proc.kill()
        a.proc.wait()
        sock.unlink()
        again = Daemon(a.proc.args, mnt, wait=False)
        daemons.append(again)
        wait_for(lambda: listening(sock), what="the API socket")
        assert state(sock) == "INIT" and "waiting for a takeover" in again.output()
        take_over(sock)
        assert (mnt / "data/dup-b.bin").read_bytes() == (src / "data/dup-b.bin").read_bytes()
    finally:
        stop_all(sup, *reversed(daemons))


def test_exit_without_a_supervisor_copy_is_refused(image, tmp_path):
    """`exit` keeps the mount for a next daemon; when no supervisor holds the connection that
    would strand it (ENOTCONN for every reader): 400, and the daemon serves on."""
    require_fuse()
    img, src = image
    mnt, sock = tmp_path / "mnt", tmp_path / "a.sock"
    mnt.mkdir()
    a = Daemon(argv(img, mnt, sock, tmp_path / "nobody.sock", "--backend", str(img / "blobs")),
               mnt)
    try:
        wait_for(lambda: listening(sock), what="the API socket")
        code, body = api_call(sock, "PUT", "/api/v1/daemon/exit")
        assert code == 400 and b"sendfd first" in body, body
        assert (mnt / "README.txt").read_bytes() == (src / "README.txt").read_bytes()
        assert a.proc.poll() is None
    finally:
        a.stop()


class FakeSupervisor:
    """Hands one connecting daemon the given record and fd (a hostile or confused supervisor)."""

    def __init__(self, path: Path, record: bytes, fd: int) -> None:
        import array
        import socket

        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()

        def serve() -> None:
            conn, _ = self.sock.accept()
            conn.sendmsg([record], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            conn.close()
        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()


@pytest.mark.parametrize("case", ["not-fuse", "bad-conn-id", "garbage"])
def test_a_hostile_supervisor_gets_a_clear_refusal(image, tmp_path, case):
    require_fuse()
    img, _src = image
    mnt, sock, sup = tmp_path / "mnt", tmp_path / "b.sock", tmp_path / "sup.sock"
    mnt.mkdir()
    record = {"magic": "pynydusd-handover", "version": 1, "mountpoint": str(mnt),
              "bootstrap": str(img / "bootstrap"), "conn_id": "x"}
    fd = os.open("/dev/null", os.O_RDONLY)
    if case == "bad-conn-id":
        fd = os.open("/dev/fuse", os.O_RDWR)  # a real /dev/fuse fd, connected to nothing
    data = b"\xff" * 100 if case == "garbage" else json.dumps(record).encode()
    FakeSupervisor(sup, data, fd)
    b = new_daemon(img, mnt, sock, sup)
    try:
        code, body = api_call(sock, "PUT", "/api/v1/daemon/fuse/takeover")
        want = {"not-fuse": b"not /dev/fuse", "bad-conn-id": b"gone",
                "garbage": b"no pynydusd record"}[case]
        assert code == 500 and want in body, body
        assert state(sock) == "INIT" and "Traceback" not in b.output()
        assert b.terminate()[0] == 0 and fstype_at(mnt) is None
    finally:
        os.close(fd)
        b.stop()


class ScriptedSupervisor:
    """A supervisor that, like nydus-snapshotter's, knows which call comes next: `store()`
    takes the next connection's record and fd, `give()` sends them to the next connection and
    closes without reading anything."""

    def __init__(self, path: Path) -> None:
        import socket

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()
        self.record, self.fds = b"", []

    def _one(self, fn) -> threading.Thread:
        t = threading.Thread(target=fn, daemon=True)
        t.start()
        return t

    def store(self) -> threading.Thread:
        import socket

        def run() -> None:
            conn, _ = self.sock.accept()
            data, anc, _, _ = conn.recvmsg(32768, socket.CMSG_SPACE(4 * 4))
            while more := conn.recv(32768):
                data += more
            self.record = data
            self.fds = [fd for _, _, d in anc for fd in struct.unpack(f"{len(d) // 4}i", d)]
            conn.close()
        return self._one(run)

    def give(self) -> threading.Thread:
        import array
        import socket

        def run() -> None:
            conn, _ = self.sock.accept()
            conn.sendmsg([self.record], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          array.array("i", self.fds))])
            time.sleep(0.2)  # the daemon's hello has surely arrived: the close resets
            conn.close()
        return self._one(run)

    def stop(self) -> None:
        self.sock.close()
        for fd in self.fds:
            os.close(fd)


@pytest.mark.timeout(120)
def test_hot_upgrade_through_a_supervisor_that_never_reads(image, tmp_path):
    """The supervisor side as nydus-snapshotter plays it: it is told what comes next, and when
    it gives the fd it reads nothing (the daemon's one-byte hello is left unread, which makes
    the daemon's last read a connection reset): the takeover still succeeds."""
    require_fuse()
    img, src = image
    sup = ScriptedSupervisor(tmp_path / "sup.sock")
    mnt, a_sock, b_sock = tmp_path / "mnt", tmp_path / "a.sock", tmp_path / "b.sock"
    mnt.mkdir()
    a = Daemon(argv(img, mnt, a_sock, sup.path, "--backend", str(img / "blobs")), mnt)
    b = None
    try:
        wait_for(lambda: listening(a_sock), what="the API socket")
        t = sup.store()
        assert api_call(a_sock, "PUT", "/api/v1/daemon/fuse/sendfd")[0] == 204
        t.join(5)
        assert len(sup.fds) == 1 and json.loads(sup.record)["mountpoint"] == str(mnt)
        b = new_daemon(img, mnt, b_sock, sup.path)
        assert api_call(a_sock, "PUT", "/api/v1/daemon/exit")[0] == 204
        sup.give()
        take_over(b_sock)
        assert (mnt / "data/dup-b.bin").read_bytes() == (src / "data/dup-b.bin").read_bytes()
    finally:
        stop_all(sup, b, a)


@pytest.mark.timeout(120)
def test_a_bootstrap_replaced_under_the_mount_is_not_taken_over(image, tmp_path):
    """The record names the bootstrap file the old daemon opened, not what its path holds at
    sendfd: a file renamed over that path (another image) makes the takeover fail."""
    require_fuse()
    img, _src = image
    mine = tmp_path / "img"
    mine.mkdir()
    (mine / "bootstrap").write_bytes((img / "bootstrap").read_bytes())
    (mine / "blobs").symlink_to(img / "blobs")
    sup = Supervisor(tmp_path)
    mnt, a_sock, b_sock = tmp_path / "mnt", tmp_path / "a.sock", tmp_path / "b.sock"
    mnt.mkdir()
    a = Daemon(argv(mine, mnt, a_sock, sup.path, "--backend", str(img / "blobs")), mnt)
    b = None
    try:
        wait_for(lambda: listening(a_sock), what="the API socket")
        new = tmp_path / "new-bootstrap"
        new.write_bytes((img / "bootstrap").read_bytes())
        os.rename(new, mine / "bootstrap")  # a re-pull renames the new file into place
        assert api_call(a_sock, "PUT", "/api/v1/daemon/fuse/sendfd")[0] == 204
        b = new_daemon(mine, mnt, b_sock, sup.path, "--backend", str(img / "blobs"))
        assert api_call(a_sock, "PUT", "/api/v1/daemon/exit")[0] == 204
        code, body = api_call(b_sock, "PUT", "/api/v1/daemon/fuse/takeover")
        assert code == 500 and b"bootstrap" in body, body
    finally:
        stop_all(sup, b, a)


@pytest.mark.timeout(120)
def test_sigterm_after_sendfd_aborts_a_mount_detached_already(image, tmp_path):
    """`umount -l` of the mount (an overlay keeps its superblock), then SIGTERM of a daemon
    whose connection the supervisor holds: the connection is aborted, so reads through the
    overlay fail at once instead of waiting for the supervisor to let go."""
    require_fuse()
    img, src = image
    sup = Supervisor(tmp_path)
    a, mnt, _ = start_old(img, tmp_path, sup.path)
    merged = overlay(mnt, tmp_path)
    try:
        assert (merged / "README.txt").read_bytes() == (src / "README.txt").read_bytes()
        subprocess.run(["umount", "-l", str(mnt)], check=True)
        assert a.terminate()[0] == 0
        t, out = reader(merged / "data/random-300k.bin")
        t.join(5)
        assert not t.is_alive() and isinstance(out.get("error"), OSError), out
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)
        sup.stop()
        a.stop()


@pytest.mark.timeout(120)
def test_a_restart_does_not_take_over_from_a_stopped_daemon(image, tmp_path):
    """The old daemon is stopped (SIGSTOP), not dead: a restart that finds the mount unserved
    waits for a takeover, but refuses one whose sender still runs (two daemons would serve one
    connection). The old daemon, continued, serves on."""
    require_fuse()
    img, src = image
    sup = Supervisor(tmp_path)
    a, mnt, sock = start_old(img, tmp_path, sup.path)
    again = None
    try:
        a.proc.send_signal(signal.SIGSTOP)
        sock2 = tmp_path / "again.sock"
        args = [x if x != str(sock) else str(sock2) for x in a.proc.args]
        again = Daemon(args, mnt, wait=False)
        wait_for(lambda: listening(sock2), what="the API socket")
        code, body = api_call(sock2, "PUT", "/api/v1/daemon/fuse/takeover")
        assert code == 500 and b"still runs" in body, body
        assert again.terminate()[0] == 0
        a.proc.send_signal(signal.SIGCONT)
        assert (mnt / "data/dup-a.bin").read_bytes() == (src / "data/dup-a.bin").read_bytes()
    finally:
        a.proc.send_signal(signal.SIGCONT)
        stop_all(sup, again, a)
