"""The API socket: HTTP/1.1 over a Unix socket (mode 0600), nydusd's v1 endpoints and JSON shapes."""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler

from . import logs

log = logging.getLogger(__name__)

VERSION = {"package_ver": "0.1.0", "git_commit": "", "build_time": "", "profile": "release",
           "rustc": "none (pynydusd, Python)"}


class ApiState:
    """What the API reports; filled in by the daemon."""

    def __init__(self, daemon_id: str | None, supervisor: str | None, mountpoint: str,
                 config: dict, ops, store) -> None:
        self.daemon_id = daemon_id
        self.supervisor = supervisor
        self.mountpoint = mountpoint
        self.config = config
        self.ops = ops
        self.store = store
        self.state = "RUNNING"
        self.mounted_time = time.strftime("%Y-%m-%d %H:%M:%S %z")

    def daemon_info(self, v2: bool = False) -> dict:
        info = {"version": VERSION, "id": self.daemon_id, "supervisor": self.supervisor,
                "state": self.state, "backend_collection": None}
        if not v2:
            info["backend_collection"] = {"/": {
                "backend_type": "Rafs", "mountpoint": "/", "mounted_time": self.mounted_time,
                "config": self.config}}
        return info

    def backend_metrics(self) -> dict:
        m = self.store.metrics()
        return {k: m.get(k, 0) for k in ("backend_type", "read_count", "read_errors",
                                          "read_amount_total", "read_cumulative_latency_millis_total",
                                          "read_retries", "fetch_bad_data")}

    def blobcache_metrics(self) -> dict:
        m = self.store.metrics()
        keys = ("underlying_files", "store_path", "partial_hits", "whole_hits", "total",
                "prefetch_data_amount", "prefetch_requests_count", "prefetch_workers",
                "prefetch_begin_time_secs", "prefetch_end_time_secs", "data_all_ready",
                "prefetch_done", "prefetch_total")
        return {k: m.get(k, 0) for k in keys} | {"entries_count": m.get("total", 0)}

    def prometheus(self) -> str:
        lines = []
        for prefix, values in (("pynydusd_fs", self.ops.fs_metrics()),
                               ("pynydusd_storage", self.store.metrics())):
            for k, v in values.items():
                if isinstance(v, bool):
                    v = int(v)
                if isinstance(v, int):
                    lines.append(f"{prefix}_{k} {v}")
                elif isinstance(v, list) and all(isinstance(x, int) for x in v):
                    lines += [f'{prefix}_{k}{{index="{i}"}} {x}' for i, x in enumerate(v)]
        return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Nydus API"
    sys_version = ""

    def log_message(self, fmt: str, *args) -> None:
        log.debug("api: " + fmt, *args)

    def _send(self, code: int, body: object = None, ctype: str = "application/json") -> None:
        data = b"" if body is None else (body.encode() if isinstance(body, str)
                                         else json.dumps(body).encode())
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._send(code, {"code": "UNDEFINED", "message": message})

    def do_GET(self) -> None:  # noqa: N802
        st: ApiState = self.server.state
        path = self.path.split("?", 1)[0]
        routes = {
            "/api/v1/daemon": lambda: st.daemon_info(),
            "/api/v2/daemon": lambda: st.daemon_info(v2=True),
            "/api/v1/metrics": st.ops.fs_metrics,
            "/api/v1/metrics/backend": st.backend_metrics,
            "/api/v1/metrics/blobcache": st.blobcache_metrics,
            "/api/v1/daemon/events": lambda: {"max_errors": 500, "total_errors": 0,
                                              "max_size": 51200, "total_size": 0, "errors": []},
        }
        try:
            if path == "/api/v1/metrics/inflight":
                return self._send(204)
            if path == "/metrics":
                return self._send(200, st.prometheus(), "text/plain; version=0.0.4")
            if path in routes:
                return self._send(200, routes[path]())
            self._error(404, "NoRoute")
        except Exception as e:  # the API must never die
            log.exception("api GET %s failed", path)
            self._error(500, f"{type(e).__name__}: {e}")

    def do_PUT(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path in ("/api/v1/daemon", "/api/v2/daemon"):
            try:
                logs.set_level(json.loads(body)["log_level"])
            except (ValueError, KeyError, TypeError) as e:
                return self._error(500 if isinstance(e, ValueError) else 400, str(e))
            return self._send(204)
        if path in ("/api/v1/daemon/fuse/sendfd", "/api/v1/daemon/fuse/takeover",
                    "/api/v1/daemon/exit", "/api/v1/daemon/start"):
            return self._error(501, "pynydusd does not implement hot upgrade or failover "
                                    "(supervisor fd hand-over)")
        self._error(404, "NoRoute")

    do_POST = do_DELETE = do_PUT  # noqa: N815


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class ApiServer:
    """Serves the API socket in a background thread."""

    def __init__(self, path: str, state: ApiState) -> None:
        self.path = path
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            self.server = _Server(path, _Handler)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.server.state = state
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), name="api",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()
        log.info("HTTP API server running at %s", self.path)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
