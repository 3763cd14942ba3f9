"""Real servers on 127.0.0.1 for storage tests: Debian's docker-registry and our blob server."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.mountutil import free_port, wait_for


class Registry:
    """docker-registry (distribution 2.x) with filesystem storage; optional htpasswd basic auth."""

    def __init__(self, root: Path, user: str | None = None, password: str | None = None) -> None:
        if not shutil.which("docker-registry"):
            pytest.skip("Debian's docker-registry is not installed")
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth = (user, password) if user else None
        cfg = [
            "version: 0.1", "log:", "  level: error", "storage:", "  filesystem:",
            f"    rootdirectory: {root}/data", "  delete:", "    enabled: true", "http:",
            f"  addr: 127.0.0.1:{self.port}",
        ]
        if user:
            htpasswd = subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                                      capture_output=True, text=True).stdout
            (root / "htpasswd").write_text(htpasswd)
            cfg += ["auth:", "  htpasswd:", "    realm: test", f"    path: {root}/htpasswd"]
        (root / "config.yml").write_text("\n".join(cfg) + "\n")
        self.log = open(root / "registry.log", "w")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._up, what="docker-registry")

    def _up(self) -> bool:
        try:
            requests.get(self.url + "/v2/", timeout=0.5)
            return True
        except requests.RequestException:
            return False

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload `data` as a blob (monolithic upload); return its sha256 hex id."""
        digest = hashlib.sha256(data).hexdigest()
        r = requests.post(f"{self.url}/v2/{repo}/blobs/uploads/", auth=self.auth, timeout=10)
        assert r.status_code == 202, r.text
        loc = r.headers["Location"]
        loc = loc if loc.startswith("http") else self.url + loc
        sep = "&" if "?" in loc else "?"
        r = requests.put(f"{loc}{sep}digest=sha256:{digest}", data=data, auth=self.auth, timeout=30,
                         headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        return digest

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def wait_quiet(seconds: float = 0.05) -> None:
    time.sleep(seconds)


class ScriptedServer:
    """A threaded HTTP server on 127.0.0.1 whose answers come from `respond(handler) -> (status,
    headers, body)`; it records (method, path, headers) of every request it saw."""

    def __init__(self, respond) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                seen.append(("GET", self.path, dict(self.headers)))
                status, headers, body = respond(self)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
