"""A registry-shaped blob server on 127.0.0.1 that misbehaves on demand.

It serves `GET /v2/<repo>/blobs/sha256:<id>` with Range from a blob directory. `mode` (settable at
any time) picks the answer to blob requests:

    ok             206 with the right bytes
    500 503 429    that status, with a short text body
    reset          206 headers, half the body, then a TCP reset
    truncated      206 headers, half the body, then a clean close
    stall          no answer for `stall_s` seconds, then close
    slow           the right bytes, dribbled in 8 parts over ~0.4 s
    wrong-bytes    206 with the right length and range but flipped bytes
    wrong-range    206 with the right length but the bytes (and Content-Range) of offset + 1
    html           200, text/html error page, no Content-Range
    html-206       206 with the right Content-Range but an HTML page cut to the asked length
    redirect-loop  302 to /loop/<n+1>, for ever

`delay_s` delays every answer. It counts the requests it answered per mode in `served`.
"""

from __future__ import annotations

import collections
import os
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MODES = ("500", "503", "429", "reset", "truncated", "stall", "slow", "wrong-bytes", "wrong-range",
         "html", "html-206", "redirect-loop")
_HTML = b"<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>\n"


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up (timeouts, a killed daemon) are part of the game


class FaultServer:
    def __init__(self, blob_dir: Path, stall_s: float = 4.0, delay_s: float = 0.0) -> None:
        self.blob_dir = Path(blob_dir)
        self.mode = "ok"
        self.stall_s = stall_s
        self.delay_s = delay_s  # added before every answer: a slow server
        self.served: collections.Counter = collections.Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                server._answer(self)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        mode = self.mode
        if self.delay_s:
            time.sleep(self.delay_s)
        if h.path.startswith("/loop/"):
            self.served[mode] += 1
            if mode == "redirect-loop":
                return self._redirect(h, int(h.path.rsplit("/", 1)[1]) + 1)
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        m = re.fullmatch(r"/v2/[\w./-]+/blobs/sha256:([0-9a-f]{64})", h.path)
        path = self.blob_dir / m.group(1) if m else None
        if path is None or not path.is_file():
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        size = path.stat().st_size
        rng = re.fullmatch(r"bytes=(\d+)-(\d+)", h.headers.get("Range", ""))
        first, last = (int(rng.group(1)), min(int(rng.group(2)), size - 1)) if rng else (0, size - 1)
        with open(path, "rb") as f:
            f.seek(first)
            body = f.read(last - first + 1)
        self.served[mode] += 1
        if mode in ("500", "503", "429"):
            return self._send(h, int(mode), {"Content-Type": "text/plain", "Retry-After": "0"},
                              b"try again later\n")
        if mode == "redirect-loop":
            return self._redirect(h, 0)
        if mode == "html":
            return self._send(h, 200, {"Content-Type": "text/html"}, _HTML)
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Range": f"bytes {first}-{last}/{size}"}
        if mode == "stall":
            time.sleep(self.stall_s)
            h.close_connection = True
            return None
        if mode == "wrong-bytes":
            body = bytes(b ^ 0x5A for b in body)
        elif mode == "wrong-range":
            with open(path, "rb") as f:
                f.seek(first + 1)
                body = f.read(len(body))
            body += bytes(last - first + 1 - len(body))
            headers["Content-Range"] = f"bytes {first + 1}-{last + 1}/{size}"
        elif mode == "html-206":
            body = (_HTML * (len(body) // len(_HTML) + 1))[:len(body)]
        if mode in ("reset", "truncated"):
            h.send_response(206)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[:len(body) // 2])
            h.wfile.flush()
            if mode == "reset":  # SO_LINGER 0: close() sends RST
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            return None
        if mode == "slow":
            h.send_response(206)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            step = max(len(body) // 8, 1)
            for i in range(0, len(body), step):
                h.wfile.write(body[i:i + step])
                h.wfile.flush()
                time.sleep(0.05)
            return None
        return self._send(h, 206, headers, body)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, headers: dict, body: bytes) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    @staticmethod
    def _redirect(h: BaseHTTPRequestHandler, n: int) -> None:
        h.send_response(302)
        h.send_header("Location", f"/loop/{n}")
        h.send_header("Content-Length", "0")
        h.end_headers()


def blob_ids(blob_dir: Path) -> list[str]:
    return sorted(os.listdir(blob_dir))
