"""`pynydusd-supervisor SOCK`: keeps a daemon's FUSE fd for hot upgrade and failover.

It plays nydus-snapshotter's part where no snapshotter runs. A daemon that connects and writes
(API `sendfd`) leaves its record and `/dev/fuse` fd here; holding a copy of that fd keeps the
mount's connection alive even if the daemon dies. A daemon that connects to receive (API
`takeover`, started with `--upgrade`; it writes one zero byte, or nothing) is sent the latest
record and fd. Hot upgrade:

    curl --unix-socket OLD.sock -X PUT http://_/api/v1/daemon/fuse/sendfd
    nydusd --upgrade --apisock NEW.sock --supervisor SOCK ...   # same mountpoint and bootstrap
    curl --unix-socket OLD.sock -X PUT http://_/api/v1/daemon/exit
    curl --unix-socket NEW.sock -X PUT http://_/api/v1/daemon/fuse/takeover
    curl --unix-socket NEW.sock -X PUT http://_/api/v1/daemon/start
"""

from __future__ import annotations

import argparse
import array
import logging
import os
import select
import signal
import socket
import sys

from .handover import MAX_STATE, RECEIVER_HELLO, read_record
from .lifecycle import SocketError, listen_unix, remove_socket

log = logging.getLogger("pynydusd-supervisor")

WRITE_WAIT_S = 0.5  # a sender writes at once; a receiver writes RECEIVER_HELLO, or nothing


class Supervisor:
    """One stored record and fd, replaced by each sender and handed to each receiver."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.state = b""
        self.fd: int | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.ino = listen_unix(self.sock, path, "supervisor", 8)
        except SocketError:
            self.sock.close()
            raise

    def serve_one(self) -> None:
        """Accept one daemon and either store what it sends or send it what is stored."""
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(5.0)
            if not select.select([conn], [], [], WRITE_WAIT_S)[0]:
                self._give(conn)  # a receiver that says nothing
            elif conn.recv(1, socket.MSG_PEEK) == RECEIVER_HELLO:
                conn.recv(1)  # read: a close with unread bytes would be a reset for the daemon
                self._give(conn)
            else:
                self._store(conn)

    def _store(self, conn: socket.socket) -> None:
        data, fds = read_record(conn)
        if not fds or len(data) > MAX_STATE:
            for fd in fds:
                os.close(fd)
            log.warning("ignored a sender with %d fds and %d bytes", len(fds), len(data))
            return
        for fd in fds[1:]:
            os.close(fd)
        if self.fd is not None:
            os.close(self.fd)
        self.state, self.fd = data, fds[0]
        log.info("stored a record of %d bytes and a FUSE fd", len(data))

    def _give(self, conn: socket.socket) -> None:
        if self.fd is None:
            log.warning("a daemon asked for a takeover, but nothing is stored")
            return
        conn.sendmsg([self.state], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                     array.array("i", [self.fd]))])
        log.info("handed the stored record and FUSE fd over")

    def close(self) -> None:
        self.sock.close()
        remove_socket(self.path, self.ino)
        if self.fd is not None:
            os.close(self.fd)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `pynydusd-supervisor`."""
    p = argparse.ArgumentParser(prog="pynydusd-supervisor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("socket", help="the Unix socket path given to the daemons as --supervisor")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        sup = Supervisor(args.socket)
    except SocketError as e:
        print(f"pynydusd-supervisor: {e}", file=sys.stderr)
        return 1
    log.info("supervisor listening on %s", args.socket)
    try:
        while True:
            try:
                sup.serve_one()
            except OSError as e:
                log.warning("a daemon's connection failed: %s", e)
    except KeyboardInterrupt:
        return 0
    finally:
        sup.close()


if __name__ == "__main__":
    sys.exit(main())
