"""What a user sees when a start goes wrong: one `Error:` line naming the input at fault, exit 1,
no traceback, and nothing of theirs deleted. Also the side tools' errors and `-V`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.buildinfo import build_info
from daemon.config import ConfigError, parse_config_text
from tests.mountutil import free_port, wait_for

BIN = Path(sys.executable).parent
PYNYDUSD = BIN / "pynydusd"


def _fails(argv: list[str], env: dict | None = None, tool: Path = PYNYDUSD) -> str:
    """Run a tool that must fail at start: its stderr's last line (exit 1, no traceback)."""
    r = subprocess.run([str(tool), *argv], capture_output=True, text=True, timeout=60,
                       env=None if env is None else os.environ | env)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip().splitlines()[-1]


@pytest.fixture
def image(sample_v6, tmp_path):
    img, _src = sample_v6
    (tmp_path / "mnt").mkdir()
    return img / "bootstrap", img / "blobs", tmp_path / "mnt"


def test_each_startup_error_names_the_input_at_fault(image, tmp_path):
    boot, blobs, mnt = image
    local = ["--backend", str(blobs)]
    truncated = tmp_path / "truncated.meta"
    truncated.write_bytes(boot.read_bytes()[:3000])
    cases = [
        (["--bootstrap", str(tmp_path / "nope.meta"), *local, str(mnt)],
         f"Error: bootstrap {tmp_path / 'nope.meta'}: No such file or directory"),
        (["--bootstrap", str(truncated), *local, str(mnt)], f"Error: bootstrap {truncated}: "),
        (["--bootstrap", str(boot), *local, str(tmp_path / "no/dir")],
         f"Error: mountpoint {tmp_path / 'no/dir'}: No such file or directory"),
        (["--bootstrap", str(boot), *local, "--log-file", str(tmp_path / "no/x.log"), str(mnt)],
         f"Error: --log-file {tmp_path / 'no/x.log'}: No such file or directory"),
        (["--bootstrap", str(boot), *local, "--prefetch-files", str(tmp_path / "no.list"),
          str(mnt)], f"Error: --prefetch-files {tmp_path / 'no.list'}: No such file or directory"),
        (["--bootstrap", str(boot), *local, "--cache-dir", "/proc/no-cache-here", str(mnt)],
         "Error: cache work_dir /proc/no-cache-here: "),
    ]
    for argv, want in cases:
        assert _fails(argv).startswith(want), (argv, want)
    assert not os.path.ismount(mnt)


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc/sealer", "http://127.0.0.1:185000/sealer",
                                 "http://127.0.0.1:0/sealer", "http://127.0.0.1:/sealer"])
def test_a_backend_url_no_request_could_reach_is_refused_at_start(image, url):
    boot, _blobs, mnt = image
    line = _fails(["--bootstrap", str(boot), "--backend", url, str(mnt)])
    assert line.startswith("Error: registry 'host' must be host[:port]"), line


def test_a_bad_image_pull_auth_is_named_as_such(image, tmp_path):
    boot, _blobs, mnt = image
    cfg = tmp_path / "c.json"
    cfg.write_text('{"device": {"backend": {"type": "registry", "config": {"host": "127.0.0.1:1",'
                   ' "repo": "r", "scheme": "http", "auth": "dXNlcjpwYXNz"}}}, "mode": "direct"}')
    line = _fails(["--bootstrap", str(boot), "--config", str(cfg), str(mnt)],
                  env={"IMAGE_PULL_AUTH": "notbase64!"})
    assert line == "Error: IMAGE_PULL_AUTH is not valid base64"


def test_a_config_of_an_unknown_version_says_so():
    with pytest.raises(ConfigError, match=r"'version' is '3', not the number 2"):
        parse_config_text('version = 3\n[backend]\ntype = "localfs"\n', "c.toml")


def test_the_supervisor_never_deletes_a_file_in_the_way(tmp_path):
    precious = tmp_path / "rootfs.meta"
    precious.write_bytes(b"not a socket")
    line = _fails([str(precious)], tool=BIN / "pynydusd-supervisor")
    assert "not a socket" in line and precious.read_bytes() == b"not a socket"
    line = _fails([str(tmp_path / "no/dir/s.sock")], tool=BIN / "pynydusd-supervisor")
    assert line.endswith(f"cannot bind the supervisor socket {tmp_path / 'no/dir/s.sock'}: "
                         "No such file or directory")


def test_the_supervisor_replaces_a_stale_socket(tmp_path):
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    p = subprocess.Popen([str(BIN / "pynydusd-supervisor"), str(path)], stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            with socket.socket(socket.AF_UNIX) as c:
                return c.connect_ex(str(path)) == 0
        wait_for(listening, what="the supervisor")
    finally:
        p.terminate()
        p.wait(10)


def test_the_blob_server_says_why_it_cannot_listen(tmp_path):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        line = _fails(["-b", str(tmp_path), "--address", "127.0.0.1", "--port", str(port)],
                      tool=BIN / "pynydus-blob-server")
    assert line == (f"pynydus-blob-server: cannot listen on 127.0.0.1:{port}: Address already in "
                    "use")
    r = subprocess.run([str(BIN / "pynydus-blob-server"), "-b", str(tmp_path), "--port", "99999"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--port 99999 is not a port" in r.stderr


def test_the_cache_tool_does_not_take_a_missing_directory_for_an_empty_cache(tmp_path):
    for argv in (["list", str(tmp_path / "nope")], ["gc", str(tmp_path / "nope"), "--max-size",
                                                     "1K"]):
        assert _fails(argv, tool=BIN / "pynydusd-cache") == f"Error: {tmp_path / 'nope'} is not a " \
                                                            "directory"


def test_version_prints_the_build():
    out = subprocess.run([str(PYNYDUSD), "-V"], capture_output=True, text=True,
                         check=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines()[1:])
    assert {k: v.strip() for k, v in fields.items()}.keys() == {
        "Version", "Git Commit", "Build Time", "Profile", "Rustc"}
    assert fields["Version"].strip() == build_info()["package_ver"]
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():  # a checkout: the commit is the one checked out
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        assert fields["Git Commit"].strip() == head == build_info()["git_commit"]


@pytest.mark.parametrize("url", ["http://alice:Top/Secret@127.0.0.1:18601/r",
                                 "http://alice:Top#Secret@127.0.0.1:18601/r",
                                 "http://alice:Top?Secret@127.0.0.1:abc/r"])
def test_a_password_typed_unencoded_never_reaches_the_error(image, url):
    boot, _blobs, mnt = image
    line = _fails(["--bootstrap", str(boot), "--backend", url, str(mnt)])
    assert "Secret" not in line and "Top" not in line, line


def test_a_config_host_with_credentials_and_a_bad_port_is_refused_without_them(image, tmp_path):
    boot, _blobs, mnt = image
    cfg = tmp_path / "c.json"
    cfg.write_text('{"device": {"backend": {"type": "registry", "config": {"host": '
                   '"alice:TopSecret@127.0.0.1:abc", "repo": "r", "scheme": "http"}}}, '
                   '"mode": "direct"}')
    line = _fails(["--bootstrap", str(boot), "--config", str(cfg), str(mnt)])
    assert "'127.0.0.1'" in line and "TopSecret" not in line and "alice" not in line, line


def test_a_daemon_leaving_keeps_the_api_socket_another_has_put_there(tmp_path):
    """A daemon replaced at its API socket path (a stale file is replaced at start) removes
    the socket at exit only if it is still its own."""
    from daemon.api import ApiServer, ApiState
    from tests.mountutil import api_call

    path = str(tmp_path / "api.sock")
    servers = [ApiServer(path, ApiState(name, None, "/m", {}, None, None)) for name in "ab"]
    for s in servers:
        s.start()
    servers[0].stop()
    assert api_call(path, "GET", "/api/v1/daemon")[0] in (200, 503)  # b's, still there
    servers[1].stop()
    assert not os.path.exists(path)
