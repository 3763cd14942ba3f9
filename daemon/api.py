"""The API socket: HTTP/1.1 over a Unix socket (mode 0600), nydusd's v1 endpoints and JSON shapes."""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

from . import logs
from .buildinfo import build_info
from .lifecycle import SocketError, listen_unix, remove_socket

log = logging.getLogger(__name__)



class ApiState:
    """What the API reports; filled in by the daemon."""

    def __init__(self, daemon_id: str | None, supervisor: str | None, mountpoint: str,
                 config: dict, ops, store, control=None, config_id: str = "") -> None:
        self.daemon_id = daemon_id
        self.config_id = config_id  # the config's id (v1 device.id, v2 id): nydusd's blobcache id
        self.control = control  # the Daemon: sendfd, takeover, start, exit
        self.supervisor = supervisor
        self.mountpoint = mountpoint
        self.config = config
        self.ops = ops
        self.store = store
        self.state = "RUNNING"
        self.mounted_time = time.strftime("%Y-%m-%d %H:%M:%S %z")

    def daemon_info(self, v2: bool = False) -> dict:
        info = {"version": build_info(), "id": self.daemon_id, "supervisor": self.supervisor,
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
                                          "read_cumulative_latency_millis_dist",
                                          "read_count_block_size_dist", "read_latency_sizes_dist",
                                          "read_retries", "fetch_bad_data")}

    def blobcache_metrics(self) -> dict:
        m = self.store.metrics()
        keys = ("underlying_files", "store_path", "partial_hits", "whole_hits", "total",
                "prefetch_data_amount", "prefetch_requests_count", "prefetch_workers",
                "prefetch_unmerged_chunks", "prefetch_cumulative_time_millis",
                "prefetch_begin_time_secs", "prefetch_begin_time_millis",
                "prefetch_end_time_secs", "prefetch_end_time_millis", "buffered_backend_size",
                "data_all_ready", "prefetch_done", "prefetch_total")
        return {k: m.get(k, 0) for k in keys} | {"entries_count": m.get("total", 0)}

    def prometheus(self) -> str:
        """Prometheus text: the daemon's counters, then the standard process metrics (RSS, CPU,
        open fds, start time) that a node exporter cannot attribute to one daemon."""
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
        lines.append(f"pynydusd_fs_inflight_ops {len(self.ops.inflight)}")
        for name, kind, value in process_metrics():
            lines += [f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"


def process_metrics() -> list[tuple[str, str, float]]:
    """(name, type, value) of Prometheus' standard process metrics, from /proc/self."""
    out: list[tuple[str, str, float]] = []
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        tick = os.sysconf("SC_CLK_TCK")
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        out += [("process_cpu_seconds_total", "counter", (int(fields[11]) + int(fields[12])) / tick),
                ("process_start_time_seconds", "gauge", boot + int(fields[19]) / tick),
                ("process_virtual_memory_bytes", "gauge", int(fields[20])),
                ("process_resident_memory_bytes", "gauge", int(fields[21]) * page),
                ("process_open_fds", "gauge", len(os.listdir("/proc/self/fd")))]
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return out


MAX_BODY = 64 << 10  # the largest request body the API takes (a log level, a config)
MAX_CLIENTS = 32  # connections served at once; more are answered 503 and closed
REFUSE_DRAIN_S = 1.0  # how long a refused client's request is read before the close
MAX_REFUSING = 8  # refused clients read at once (each holds an fd); more are hung up on at once
IDLE_S = 10.0  # a connection that sends nothing for this long is closed
_NO_BODY = object()  # _json_body: the request was answered already
CONTROLS = {"/api/v1/daemon/fuse/sendfd": "sendfd", "/api/v1/daemon/fuse/takeover": "takeover",
            "/api/v1/daemon/start": "start", "/api/v1/daemon/exit": "exit"}
UNSUPPORTED = ("/api/v1/mount", "/api/v2/blobs")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Nydus API"
    sys_version = ""
    timeout = IDLE_S  # socket timeout: an idle or stalled client is dropped

    def log_message(self, fmt: str, *args) -> None:
        log.debug("api: " + fmt, *args)

    def version_string(self) -> str:
        return self.server_version

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

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a bad request line, an unknown method) in nydusd's shape."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # garbage is no HTTP/0.9 request: answer with headers
        try:
            self._error(400 if code == 501 else code, message or self.responses.get(code, ("",))[0])
        except OSError:
            pass

    def _route(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        length = self._length()
        if length is None or (length and not (method == "PUT" and path in (
                "/api/v1/daemon", "/api/v2/daemon", "/api/v1/config"))):
            self.close_connection = True  # a body nobody reads (or reads alike): the end here
        try:
            if method == "GET" and path in self._gets():
                return self._get(path, urllib.parse.parse_qs(query))
            if method == "PUT" and path in ("/api/v1/daemon", "/api/v2/daemon"):
                return self._put_daemon()
            if method == "PUT" and path == "/api/v1/config":
                return self._put_config()
            if method == "PUT" and path in CONTROLS:
                return self._control(CONTROLS[path])
            if path.startswith(UNSUPPORTED):
                return self._error(501, "pynydusd does not implement this (several instances, "
                                        "blob cache or config reload)")
            if (path in self._gets() or path in CONTROLS
                    or path in ("/api/v1/daemon", "/api/v2/daemon", "/api/v1/config")):
                return self._error(400, f"method {method} is not allowed on {path}")
            self._error(404, "NoRoute")
        except OSError:
            raise
        except Exception as e:  # the API must never die
            log.exception("api %s %s failed", method, path)
            self._error(500, f"{type(e).__name__}: {e}")

    def _control(self, action: str) -> None:
        """sendfd, takeover, start, exit: the hand-over steps (nydusd-contract 6.6)."""
        from .handover import HandoverError
        from .service import NotReady, StateError

        control = self.server.state.control
        if control is None or (action in ("sendfd", "takeover")
                               and not self.server.state.supervisor):
            return self._error(400, f"{action} needs a supervisor socket (--supervisor)")
        try:
            if action == "exit":  # answered once reading has stopped; then the process goes
                control.check_exit()
                self.close_connection = True
                control.exit()
                try:
                    self._send(204)
                    self.wfile.flush()
                finally:
                    control.exit_answered()
                return None
            getattr(control, action)()
        except StateError as e:
            return self._error(400, str(e))
        except NotReady as e:
            return self._error(503, str(e))
        except (HandoverError, OSError) as e:
            log.error("%s failed: %s", action, e)
            return self._error(500, f"{action} failed: {e}")
        self._send(204)

    def _gets(self) -> dict:
        st: ApiState = self.server.state
        return {
            "/api/v1/daemon": lambda: st.daemon_info(),
            "/api/v2/daemon": lambda: st.daemon_info(v2=True),
            "/api/v1/metrics": lambda: st.ops.fs_metrics(),
            "/api/v1/metrics/backend": st.backend_metrics,
            "/api/v1/metrics/blobcache": st.blobcache_metrics,
            "/api/v1/daemon/events": logs.ERRORS.snapshot,
            # the hot-reloadable settings; values are withheld: the API never shows credentials
            "/api/v1/config": lambda: {"registry_auth": ""},
            "/api/v1/metrics/inflight": None,
            "/api/v1/metrics/files": None,
            "/api/v1/metrics/pattern": lambda: st.ops.file_stats.pattern(),
            "/api/v1/daemon/backend": None,
            "/metrics": None,
        }

    def _get(self, path: str, query: dict) -> None:
        st: ApiState = self.server.state
        ids = query.get("id")
        if ids is not None and path.startswith("/api/v1/metrics") and not (
                path == "/api/v1/metrics/inflight" or ids[-1] in (
                    ("", st.config_id, st.daemon_id or "") if path.endswith("blobcache")
                    else ("/",))):
            return self._error(404, f"no instance with id {ids[-1][:100]!r}")
        if st.ops is None and path.startswith(("/api/v1/metrics", "/metrics")):
            return self._error(503, f"not serving yet (state {st.state})")
        if path == "/api/v1/daemon/backend":
            return self._backend_info(query)
        if path == "/api/v1/metrics/inflight":
            busy = st.ops.inflight_ops()
            return self._send(200, busy) if busy else self._send(204)
        if path == "/metrics":
            return self._send(200, st.prometheus(), "text/plain; version=0.0.4")
        if path == "/api/v1/metrics/files":  # latest=true: the files read since the last call
            stats = st.ops.file_stats
            latest = query.get("latest", ["false"])[-1].lower() == "true"
            if latest:
                return self._send(200, stats.drain_latest())
            # tens of MB for a large image: encoded by the pure-Python encoder, which lets the
            # FUSE loop run between its steps (the C one would hold the GIL throughout)
            return self._send(200, "".join(json.JSONEncoder().iterencode(stats.files())))
        self._send(200, self._gets()[path]())

    def _backend_info(self, query: dict) -> None:
        """GET /api/v1/daemon/backend?mountpoint=/: the superblock of the image mounted at that
        virtual mountpoint (only / exists), as nydusd's RafsSuperMeta."""
        st: ApiState = self.server.state
        mountpoint = query.get("mountpoint")
        if not mountpoint:
            return self._error(400, "query parameter 'mountpoint' is required")
        if mountpoint[-1] != "/":
            return self._error(404, f"nothing is mounted at {mountpoint[-1][:100]!r}")
        if st.ops is None:
            return self._error(503, f"not serving yet (state {st.state})")
        from .fs import FOREVER_S  # the attribute and entry timeouts the daemon gives the kernel

        timeout = {"secs": int(FOREVER_S), "nanos": 0}
        self._send(200, st.ops.image.superblock_info() | {"attr_timeout": timeout,
                                                          "entry_timeout": timeout})

    def _length(self) -> int | None:
        """The body's length (0 without one) when one Content-Length of ASCII digits frames it,
        else None: two lengths, Transfer-Encoding or a malformed value leave it unknown."""
        lengths = self.headers.get_all("Content-Length") or ["0"]
        value = lengths[0].strip()
        if len(lengths) > 1 or "Transfer-Encoding" in self.headers or not (
                value.isascii() and value.isdigit() and len(value) <= 12):
            return None
        return int(value)

    def _body(self) -> bytes | None:
        """The request body (at most MAX_BODY bytes), or None after answering 400."""
        n = self._length()
        if n is None:
            self.close_connection = True
            self._error(400, "a body with a valid Content-Length is needed")
            return None
        if n > MAX_BODY:
            self.close_connection = True
            self._error(400, f"body of {n} bytes is larger than {MAX_BODY}")
            return None
        return self.rfile.read(n)

    def _json_body(self) -> object:
        """The request body parsed as JSON, or _NO_BODY after answering 400."""
        body = self._body()
        if body is None:
            return _NO_BODY
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as e:
            self._error(400, f"unparsable body: {e}")
            return _NO_BODY

    def _put_daemon(self) -> None:
        request = self._json_body()
        if request is _NO_BODY:
            return
        if not isinstance(request, dict) or "log_level" not in request:
            return self._error(400, "body must be {\"log_level\": \"<level>\"}")
        level = request["log_level"]
        try:
            if not isinstance(level, str):
                raise ValueError(f"invalid log level {level!r}")
            logs.set_level(level)
        except ValueError as e:  # upstream: an invalid level is a 500
            return self._error(500, str(e))
        self._send(204)

    def _put_config(self) -> None:
        """Hot-reload the registry credentials: {"registry_auth": "<base64 of user:password>"}."""
        from .storage_errors import BackendError

        request = self._json_body()
        if request is _NO_BODY:
            return
        if not isinstance(request, dict) or not all(isinstance(v, str) for v in request.values()):
            return self._error(400, "body must be a JSON object of strings")
        unknown = sorted(set(request) - {"registry_auth"})
        if unknown:  # upstream: unknown keys are a 500
            return self._error(500, f"unknown config keys {unknown[:5]!r}: only registry_auth "
                                    "can be changed")
        store = self.server.state.store
        if store is None:
            return self._error(503, f"not serving yet (state {self.server.state.state})")
        if "registry_auth" in request:
            try:
                store.backend.set_auth(request["registry_auth"])
            except BackendError as e:
                return self._error(500, str(e))
            log.info("registry credentials replaced over the API")
        self._send(204)

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 128  # clients connecting together queue, they are not refused

    def __init__(self, *args) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.refusers = threading.BoundedSemaphore(MAX_REFUSING)  # 503s being answered
        super().__init__(*args)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):  # full: say so and hang up, keep the fds
            if self.refusers.acquire(blocking=False):
                try:
                    threading.Thread(target=self._refuse, args=(request,), daemon=True,
                                     name="api-refuse").start()
                    return
                except RuntimeError:
                    self.refusers.release()
            self._refuse(request, drain_s=0.0)  # refusing too many already: hang up now
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def _refuse(self, request, drain_s: float = REFUSE_DRAIN_S) -> None:
        """Answer 503 and close. What the client sends meanwhile is read first (for at most
        drain_s): closing a socket with unread data resets it, and the client would see an error
        instead of the 503."""
        try:
            request.settimeout(1.0)
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nServer: Nydus API\r\n"
                            b"Content-Type: application/json\r\nContent-Length: 54\r\n"
                            b"Connection: close\r\n\r\n"
                            b'{"code": "UNDEFINED", "message": "too many clients"}  ')
            request.shutdown(socket.SHUT_WR)
            if not drain_s:  # hanging up at once: take at least what has come already
                request.setblocking(False)
                request.recv(MAX_BODY)
            deadline = time.monotonic() + drain_s
            taken = 0
            while taken < MAX_BODY and (left := deadline - time.monotonic()) > 0:
                request.settimeout(left)
                chunk = request.recv(MAX_BODY)
                if not chunk:
                    break
                taken += len(chunk)
        except OSError:
            pass
        finally:
            if drain_s:
                self.refusers.release()
            request.close()

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        log.debug("api connection error", exc_info=True)  # a client hanging up early


class ApiServer:
    """Serves the API socket in a background thread."""

    def __init__(self, path: str, state: ApiState) -> None:
        self.path = path
        self.server = _Server(path, _Handler, False)  # bound by listen_unix
        try:
            self.ino = listen_unix(self.server.socket, path, "API", self.server.request_queue_size)
        except SocketError:
            self.server.server_close()
            raise
        self.server.state = state
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), name="api",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()
        log.info("HTTP API server running at %s", self.path)

    def stop(self) -> None:
        """Stop serving and remove the socket, unless another daemon's has replaced it."""
        self.server.shutdown()
        self.server.server_close()
        remove_socket(self.path, self.ino)
