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


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """A token server for docker-registry's `auth: token`: RS256 JWTs with an x5c certificate
    (self-signed, made with openssl), granting the scope asked for to `user`/`password` only."""

    service, issuer = "test-registry", "test-issuer"

    def __init__(self, root: Path, user: str, password: str, ttl: int = 300) -> None:
        import base64
        import json
        import threading
        import urllib.parse
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        root.mkdir(parents=True, exist_ok=True)
        self.key, self.cert = root / "key.pem", root / "cert.pem"
        self.ttl = ttl
        self.fail = False  # answer 503 to every token request
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(self.key), "-out", str(self.cert), "-days", "1", "-subj", "/CN=token"],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        issuer = self
        self.requests: list[tuple[str, dict]] = []
        good = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, params: dict) -> None:
                issuer.requests.append((self.command, params))
                if issuer.fail:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("Authorization") != good:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"token": issuer.sign(params.get("scope", ""), der),
                                   "expires_in": issuer.ttl}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                q = urllib.parse.urlsplit(self.path).query
                self._answer(dict(urllib.parse.parse_qsl(q)))

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                self._answer(dict(urllib.parse.parse_qsl(self.rfile.read(n).decode())))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def sign(self, scope: str, der: bytes) -> str:
        import base64
        import json
        import time

        access = []
        for item in scope.split():
            kind, name, actions = item.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        claims = {"iss": self.issuer, "sub": "alice", "aud": self.service, "exp": now + self.ttl,
                  "nbf": now - 10, "iat": now, "jti": str(now), "access": access}
        signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                             input=signing.encode(), check=True, capture_output=True).stdout
        return f"{signing}.{_b64url(sig)}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Registry:
    """docker-registry (distribution 2.x) with filesystem storage; optional htpasswd basic auth."""

    def __init__(self, root: Path, user: str | None = None, password: str | None = None,
                 token: TokenIssuer | None = None, port: int | None = None,
                 tls: tuple[Path, Path, Path] | None = None, mirror_of: str | None = None) -> None:
        """`tls`: (CA certificate, server certificate, server key) to serve HTTPS with;
        `mirror_of`: a registry URL this one is a pull-through cache of."""
        if not shutil.which("docker-registry"):
            pytest.skip("Debian's docker-registry is not installed")
        root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify = str(tls[0]) if tls else True
        self.auth = (user, password) if user else None
        cfg = [
            "version: 0.1", "log:", "  level: error", "storage:", "  filesystem:",
            f"    rootdirectory: {root}/data", "  delete:", "    enabled: true", "http:",
            f"  addr: 127.0.0.1:{self.port}",
        ]
        if tls:
            cfg += ["  tls:", f"    certificate: {tls[1]}", f"    key: {tls[2]}"]
        if token:
            cfg += ["auth:", "  token:", f"    realm: {token.url}/token",
                    f"    service: {token.service}", f"    issuer: {token.issuer}",
                    f"    rootcertbundle: {token.cert}"]
        elif user:
            htpasswd = subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                                      capture_output=True, text=True).stdout
            (root / "htpasswd").write_text(htpasswd)
            cfg += ["auth:", "  htpasswd:", "    realm: test", f"    path: {root}/htpasswd"]
        if mirror_of:
            cfg += ["proxy:", f"  remoteurl: {mirror_of}"]
        (root / "config.yml").write_text("\n".join(cfg) + "\n")
        self.log = open(root / "registry.log", "w")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._up, what="docker-registry")

    def _up(self) -> bool:
        try:
            requests.get(self.url + "/v2/", timeout=0.5, verify=self.verify)
            return True
        except requests.RequestException:
            return False

    def push_blob(self, repo: str, data: bytes, bearer: str | None = None) -> str:
        """Upload `data` as a blob (monolithic upload); return its sha256 hex id."""
        digest = hashlib.sha256(data).hexdigest()
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        r = requests.post(f"{self.url}/v2/{repo}/blobs/uploads/", auth=self.auth, timeout=10,
                          headers=headers, verify=self.verify)
        assert r.status_code == 202, r.text
        loc = r.headers["Location"]
        loc = loc if loc.startswith("http") else self.url + loc
        sep = "&" if "?" in loc else "?"
        r = requests.put(f"{loc}{sep}digest=sha256:{digest}", data=data, auth=self.auth, timeout=30,
                         headers={"Content-Type": "application/octet-stream", **headers},
                         verify=self.verify)
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


def make_tls(root: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate it signed for 127.0.0.1: (ca.pem, server.pem, server.key)."""
    root.mkdir(parents=True, exist_ok=True)
    ca, ca_key = root / "ca.pem", root / "ca.key"
    cert, key, csr, ext = root / "server.pem", root / "server.key", root / "server.csr", root / "ext"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
        "-out", str(ca), "-days", "1", "-subj", "/CN=pynydusd test CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))
    return ca, cert, key
