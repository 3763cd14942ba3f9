"""A mount whose blobs come through nydusd's http-proxy backend: over TCP from a plain HTTP
server, and over a Unix socket from a server exposing the one blob."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.mountutil import read_every_file_through_a_mount, require_fuse
from tests.servers import ScriptedServer
from tests.storage.test_http_proxy import UnixBlobServer

CONFIG = """
version = 2
[backend]
type = "http-proxy"
[backend.http_proxy]
addr = "{addr}"
path = "{path}"
[cache]
type = "blobcache"
[cache.filecache]
work_dir = "{cache}"
"""


def blob_dir_server(blob_dir: Path) -> ScriptedServer:
    """GET /blobs/<id> with Range, from the files of blob_dir."""
    def respond(h):
        m = re.fullmatch(r"/blobs/([0-9a-f]{64})", h.path)
        if not m or not (blob_dir / m.group(1)).is_file():
            return 404, {}, b""
        data = (blob_dir / m.group(1)).read_bytes()
        a, b = (int(x) for x in re.fullmatch(r"bytes=(\d+)-(\d+)", h.headers["Range"]).groups())
        return 206, {"Content-Range": f"bytes {a}-{b}/{len(data)}"}, data[a:b + 1]
    return ScriptedServer(respond)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
@pytest.mark.timeout(120)
def test_a_mount_reads_every_file_through_the_http_proxy_backend(sample_v6, tmp_path, transport):
    require_fuse()
    img, src = sample_v6
    blobs = sorted((img / "blobs").iterdir())
    if transport == "tcp":
        server = blob_dir_server(img / "blobs")
        addr, path = server.url, "/blobs"
    else:
        assert len(blobs) == 1  # one blob per socket, as nydusd
        server = UnixBlobServer(tmp_path / "blob.sock", blobs[0].read_bytes())
        addr, path = str(tmp_path / "blob.sock"), ""
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG.format(addr=addr, path=path, cache=tmp_path / "cache"))
    try:
        log = read_every_file_through_a_mount(img, src, cfg, tmp_path)
        assert server.seen  # the bytes came through it
        assert "http-proxy backend" in log
    finally:
        server.stop()
