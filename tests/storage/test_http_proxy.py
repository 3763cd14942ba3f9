"""nydusd's http-proxy backend (config v2): blobs from a plain HTTP server over TCP, or one blob
from a server on a Unix socket; servers on 127.0.0.1 and in a temporary directory."""

from __future__ import annotations

import re
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from daemon.backends import make_backend
from daemon.config import ConfigError, parse_config_text
from daemon.storage_errors import BackendError
from tests.servers import ScriptedServer
from tests.storage.test_registry_http import BLOB, BLOB_ID, ranged


def config(backend: str) -> str:
    return f'version = 2\n[backend]\ntype = "http-proxy"\n[backend.http_proxy]\n{backend}\n'


class UnixBlobServer:
    """An HTTP server on a Unix socket serving one blob at every path, with Range; it records
    (path, headers) of every request."""

    def __init__(self, path: Path, blob: bytes) -> None:
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def address_string(self) -> str:
                return "unix"

            def do_GET(self) -> None:  # noqa: N802
                seen.append((self.path, dict(self.headers)))
                m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
                a, b = (int(m.group(1)), int(m.group(2))) if m else (0, len(blob) - 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {a}-{b}/{len(blob)}")
                self.send_header("Content-Length", str(b - a + 1))
                self.end_headers()
                self.wfile.write(blob[a:b + 1])

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.path = path
        self.server = Server(str(path), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_blobs_come_from_addr_and_path_over_tcp():
    s = ScriptedServer(ranged)
    try:
        cfg = parse_config_text(config(f'addr = "{s.url}"\npath = "/store/blobs/"'))
        backend = make_backend("http-proxy", cfg.storage.backend_config)
        assert backend.kind == "http-proxy"
        assert backend.read(BLOB_ID, 100, 1000) == BLOB[100:1100]
        assert s.seen[0][1] == f"/store/blobs/{BLOB_ID}"
        assert s.seen[0][2]["Range"] == "bytes=100-1099"
        assert "Authorization" not in s.seen[0][2]
    finally:
        s.stop()


def test_a_missing_blob_is_an_error_not_bytes():
    s = ScriptedServer(lambda h: (404, {}, b"no such blob"))
    try:
        cfg = parse_config_text(config(f'addr = "{s.url}"\nretry_limit = 0'))
        with pytest.raises(BackendError):
            make_backend("http-proxy", cfg.storage.backend_config).read(BLOB_ID, 0, 10)
        assert s.seen[0][1] == f"/{BLOB_ID}"
    finally:
        s.stop()


def test_every_read_is_get_slash_on_a_unix_socket(tmp_path):
    server = UnixBlobServer(tmp_path / "blob.sock", BLOB)
    try:
        cfg = parse_config_text(config(f'addr = "{tmp_path / "blob.sock"}"'))
        backend = make_backend("http-proxy", cfg.storage.backend_config)
        assert backend.read(BLOB_ID, 7, 70) == BLOB[7:77]
        assert backend.read("cd" * 32, 0, 5) == BLOB[:5]  # the blob id does not matter
        assert [p for p, _h in server.seen] == ["/", "/"]
        assert server.seen[0][1]["Range"] == "bytes=7-76"
    finally:
        server.stop()


def test_a_unix_server_sending_short_bodies_never_yields_them(tmp_path):
    server = UnixBlobServer(tmp_path / "short.sock", BLOB[:50])  # a blob shorter than the reads
    try:
        cfg = parse_config_text(config(f'addr = "{tmp_path / "short.sock"}"\ntimeout = 1'))
        with pytest.raises(BackendError):
            make_backend("http-proxy", cfg.storage.backend_config).read(BLOB_ID, 40, 20)
    finally:
        server.stop()


@pytest.mark.parametrize("text, names", [
    ('addr = "relative/blob.sock"', "absolute path of a Unix socket"),
    ('addr = "http://[::1"', "not a URL"),
    ('addr = "http://:80"', "has no host"),
    ('addr = "http://h"\nretry_limit = "3"', "'retry_limit'"),
    ('addr = "http://h"\nmirrors = [{ host = "mirror" }]', "'mirrors[0].host'"),
])
def test_bad_http_proxy_configs_are_refused_by_name(text, names):
    with pytest.raises(ConfigError, match=re.escape(names)):
        parse_config_text(config(text))


def test_v1_configs_do_not_take_http_proxy():
    with pytest.raises(ConfigError, match="needs a v2 config"):
        parse_config_text('{"device": {"backend": {"type": "http-proxy", "config": '
                          '{"addr": "http://h"}}}, "mode": "direct"}')


def test_a_socket_path_that_is_not_a_socket_fails_at_start(tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = parse_config_text(config(f'addr = "{tmp_path / "file"}"'))
    with pytest.raises(BackendError, match="not a Unix socket"):
        make_backend("http-proxy", cfg.storage.backend_config)
    cfg = parse_config_text(config(f'addr = "{tmp_path / "gone.sock"}"'))
    with pytest.raises(BackendError, match="gone.sock"):
        make_backend("http-proxy", cfg.storage.backend_config)
