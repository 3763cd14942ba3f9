"""`pynydus-blob-server`: serve a blob directory like nydus-backend-proxy (sealer's blob server).

    GET/HEAD /v2/<repo>/blobs/sha256:<blob_id>   whole blob, or with Range: 200 + Content-Range

Only the first range of a Range header is used; suffix and open ranges work, ends past EOF are
clamped, an unsatisfiable range gets 416, an unknown blob 404, a digest without `sha256:` 400,
and an id that is not 64 lowercase hex digits 400 before it touches the file system.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("pynydus-blob-server")

_PATH_RE = re.compile(r"^/v2/[^/]+/blobs/([^/]+)$")
_ID_RE = re.compile(r"[0-9a-f]{64}")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class BlobHandler(BaseHTTPRequestHandler):
    """HEAD and GET of blobs, with ranges."""

    protocol_version = "HTTP/1.1"
    server_version = "pynydus-blob-server"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    sys_version = ""

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _plain(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _blob_path(self) -> str | None:
        m = _PATH_RE.match(self.path.split("?", 1)[0])
        if not m:
            self._plain(404, "not found")
            return None
        digest = m.group(1)
        if not digest.startswith("sha256:") or not _ID_RE.fullmatch(digest[7:]):
            self._plain(400, "digest must be sha256:<64 lowercase hex digits>")
            return None
        path = os.path.join(self.server.blobsdir, digest[7:])
        if not os.path.isfile(path):
            self._plain(404, "blob not found")
            return None
        return path

    def _range(self, size: int) -> tuple[int, int] | None | bool:
        """(start, end inclusive), None without a Range header, False if unsatisfiable."""
        header = self.headers.get("Range")
        if header is None:
            return None
        m = _RANGE_RE.match(header.split(",", 1)[0].strip())
        if not m or (not m.group(1) and not m.group(2)):
            return False
        if not m.group(1):
            n = int(m.group(2))
            start, end = max(0, size - n), size - 1
        else:
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        if start >= size or end < start:
            return False
        return start, end

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = self._blob_path()
        if path is None:
            return
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            rng = self._range(size)
            if rng is False:
                return self._plain(416, "range not satisfiable")
            start, end = rng if rng else (0, size - 1)
            length = end - start + 1 if size else 0
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Docker-Content-Digest", os.path.basename(path))
            self.send_header("Content-Length", str(length))
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{end}/{length}")
            self.end_headers()
            if self.command == "GET" and length:
                f.seek(start)
                _copy(f, self.wfile, length)


def _copy(src, dst, n: int) -> None:
    while n > 0:
        buf = src.read(min(n, 1 << 20))
        if not buf:
            break
        dst.write(buf)
        n -= len(buf)


class BlobServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], blobsdir: str) -> None:
        super().__init__(address, BlobHandler)
        self.blobsdir = os.path.abspath(blobsdir)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `pynydus-blob-server`."""
    p = argparse.ArgumentParser(prog="pynydus-blob-server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-b", "--blobsdir", required=True, help="directory of blobs named by blob id")
    p.add_argument("--address", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = p.parse_args(argv)
    if not os.path.isdir(args.blobsdir):
        p.error(f"--blobsdir {args.blobsdir} is not a directory")
    if not 0 <= args.port <= 65535:
        p.error(f"--port {args.port} is not a port (0..65535; 0: any free one)")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="[%(asctime)s] %(levelname)s %(message)s", stream=sys.stderr)
    try:
        server = BlobServer((args.address, args.port), args.blobsdir)
    except OSError as e:  # the port taken, an address not ours
        print(f"pynydus-blob-server: cannot listen on {args.address}:{args.port}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 1
    log.info("serving %s on http://%s:%d/v2/<repo>/blobs/sha256:<id>", server.blobsdir,
             args.address, server.server_address[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
