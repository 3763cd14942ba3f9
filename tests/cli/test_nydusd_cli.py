"""The nydusd command-line and config surface (nydusd-contract.md sections 1 and 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import parse_args
from daemon.config import ConfigError, parse_config_text

PYNYDUSD = Path(sys.executable).parent / "pynydusd"
SEALER_ARGS = ["--thread-num", "10", "--log-level", "debug", "--mountpoint", "/mnt/x",
               "--apisock", "/run/n.sock", "--id", "sealer", "--bootstrap", "rootfs.meta",
               "--config", "httpserver.json", "--supervisor", "/run/s.sock"]


def test_start_sh_flags_in_both_spellings():
    spaced = parse_args(SEALER_ARGS, "nydusd")
    joined = parse_args([f"{a}={b}" for a, b in zip(SEALER_ARGS[::2], SEALER_ARGS[1::2], strict=True)], "nydusd")
    for args in (spaced, joined):
        assert (args.thread_num, args.log_level, args.mountpoint, args.apisock, args.id,
                args.bootstrap, args.config, args.supervisor) == (
            10, "debug", "/mnt/x", "/run/n.sock", "sealer", "rootfs.meta", "httpserver.json",
            "/run/s.sock")
    assert parse_args(["fuse", *SEALER_ARGS], "nydusd").id == "sealer"  # `nydusd fuse ...`


@pytest.mark.parametrize("argv", [
    SEALER_ARGS + ["--no-such-flag"],
    [a for a in SEALER_ARGS if a not in ("--supervisor", "/run/s.sock")],  # --id alone
    ["--thread-num", "0"] + SEALER_ARGS[2:],
    ["--log-level", "DEBUG"] + SEALER_ARGS[2:],
    ["--bootstrap", "x"],  # no mountpoint
])
def test_bad_arguments_exit_2_with_usage(argv):
    r = subprocess.run([str(PYNYDUSD), *argv], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage:" in r.stderr


def test_startup_failure_exits_1_with_error_line(tmp_path):
    (tmp_path / "mnt").mkdir()
    r = subprocess.run([str(PYNYDUSD), "--bootstrap", str(tmp_path / "missing"), "--config",
                        str(tmp_path / "missing.json"), str(tmp_path / "mnt")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.startswith("Error: ")


SEALER_JSON = {"device": {"backend": {"type": "registry", "config": {
    "scheme": "http", "host": "10.0.0.1:8000", "repo": "sealer", "some_future_key": 1}},
    "cache": {"type": "blobcache", "config": {"work_dir": "./cache"}}},
    "mode": "direct", "digest_validate": False, "enable_xattr": True,
    "fs_prefetch": {"enable": True, "threads_count": 1, "merging_size": 131072,
                    "bandwidth_rate": 10485760}, "unknown_top_level": {"x": 1}}


def test_sealer_v1_config_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse_config_text(json.dumps(SEALER_JSON))
    s = cfg.storage
    assert (s.backend_type, s.backend_config["host"], s.cache_type) == (
        "registry", "10.0.0.1:8000", "blobcache")
    assert s.work_dir == os.path.join(str(tmp_path), "cache")  # relative to the cwd
    assert s.prefetch_enable and s.prefetch_all  # v1 default prefetch_all = true
    assert (s.prefetch_threads, s.prefetch_merging_size, s.prefetch_bandwidth_rate) == (
        1, 131072, 10485760)
    assert cfg.enable_xattr and not s.digest_validate


V2_LOCALFS = '''
version = 2
[backend]
type = "localfs"
[backend.localfs]
dir = "/srv/blobs"
[cache]
type = "blobcache"
'''


def test_v2_toml_defaults_differ():
    cfg = parse_config_text(V2_LOCALFS + '''
[cache.filecache]
work_dir = "/var/cache/x"
[rafs]
mode = "direct"
[rafs.prefetch]
enable = true
''')
    assert cfg.version == 2 and cfg.storage.backend_config["dir"] == "/srv/blobs"
    assert cfg.storage.prefetch_enable and not cfg.storage.prefetch_all  # v2 default false
    assert cfg.storage.work_dir == "/var/cache/x"  # blobcache's work_dir is [cache.filecache]'s


def test_v2_cache_prefetch_drives_the_workers():
    """[rafs.prefetch] says what to prefetch; [cache.prefetch] sets threads, request size, rate."""
    cfg = parse_config_text(V2_LOCALFS + '''
[cache.prefetch]
enable = true
threads = 2
bandwidth_limit = 1048576
[rafs.prefetch]
enable = true
prefetch_all = true
threads = 16
''')
    s = cfg.storage
    assert (s.prefetch_enable, s.prefetch_all, s.prefetch_threads, s.prefetch_bandwidth_rate) == (
        True, True, 2, 1048576)


def test_prefetch_threads_are_checked_only_when_prefetch_is_on():
    off = {**SEALER_JSON, "fs_prefetch": {"enable": False, "threads_count": 0}}
    assert not parse_config_text(json.dumps(off)).storage.prefetch_enable


def _sealer_with(**backend_config) -> str:
    cfg = json.loads(json.dumps(SEALER_JSON))
    cfg["device"]["backend"]["config"].update(backend_config)
    return json.dumps(cfg)


@pytest.mark.parametrize("text, what", [
    ("{", "failed to parse"),
    (json.dumps({"device": {"backend": {"type": "registry", "config": {}}}, "mode": "direct"}),
     "host"),
    (json.dumps({**SEALER_JSON, "mode": "fast"}), "mode"),
    (json.dumps({**SEALER_JSON, "fs_prefetch": {"enable": True, "threads_count": 0}}),
     "threads_count"),
    # wrong types are refused by name, as upstream's typed parser does: "false" is not false
    (_sealer_with(skip_verify="false"), "'skip_verify' must be true or false"),
    (_sealer_with(timeout="5"), "'timeout' must be a number"),
    (_sealer_with(retry_limit="abc"), "'retry_limit' must be an integer"),
    (_sealer_with(repo=5), "'repo' must be a string"),
    (_sealer_with(proxy={"url": "http://p", "fallback": "false"}), "'fallback' must be true"),
    (json.dumps({**SEALER_JSON, "device": {**SEALER_JSON["device"], "cache": "blobcache"}}),
     "'cache' must be an object"),
    (json.dumps({**SEALER_JSON, "fs_prefetch": True}), "'fs_prefetch' must be an object"),
    (json.dumps({**SEALER_JSON, "device": {**SEALER_JSON["device"],
                                           "backend": {"type": "registry", "config": "x"}}}),
     "config must be an object"),
    ("[" * 100000 + "]" * 100000, "failed to parse"),
])
def test_bad_configs_say_why(text, what):
    with pytest.raises(ConfigError, match=what):
        parse_config_text(text)


def test_the_config_the_api_shows_is_v2_json_that_parses_back(tmp_path, monkeypatch):
    """backend_collection's config is the config rendered as v2 JSON, secrets blanked: parsed
    again it gives the same storage settings."""
    monkeypatch.chdir(tmp_path)
    cfg = parse_config_text(_sealer_with(auth="dTpw", registry_token="s3cr3t-t0ken"))
    shown = cfg.redacted()
    assert shown["version"] == 2 and shown["backend"]["registry"]["auth"] == ""
    assert "dTpw" not in json.dumps(shown) and "s3cr3t-t0ken" not in json.dumps(shown)
    again = parse_config_text(json.dumps(shown))
    keep = ("backend_type", "cache_type", "work_dir", "prefetch_enable", "prefetch_all",
            "prefetch_threads", "prefetch_merging_size", "prefetch_bandwidth_rate", "amplify_io")
    assert {k: getattr(again.storage, k) for k in keep} == {k: getattr(cfg.storage, k) for k in keep}


def test_credentials_in_urls_never_reach_the_api(tmp_path, monkeypatch):
    """user:password in --backend becomes basic auth; in a proxy or mirror URL it is cut from
    what the API shows."""
    import base64

    from daemon.cli import backend_config

    cfg = backend_config("https://alice:s3cr%40t@reg.example:5000/lib/app")
    b = cfg.storage.backend_config
    assert b["host"] == "reg.example:5000" and base64.b64decode(b["auth"]) == b"alice:s3cr@t"
    monkeypatch.chdir(tmp_path)
    cfg = parse_config_text(_sealer_with(
        proxy={"url": "http://puser:ppass@proxy.example:3128"},
        mirrors=[{"host": "http://muser:mpass@mirror", "headers": {"Authorization": "Basic x"}}]))
    shown = json.dumps(cfg.redacted())
    assert not any(secret in shown for secret in ("ppass", "puser", "mpass", "Basic x"))
    from daemon.backends import no_userinfo

    for url, bare in (("https://m:PW@mirror/?next=https://x", "https://mirror/?next=https://x"),
                      ("https://m:PW@mirror#a://b", "https://mirror#a://b"),
                      ("u:PW@host:5000", "host:5000"), ("http://[::1]:5000/r", "http://[::1]:5000/r")):
        assert no_userinfo(url) == bare
    assert "proxy.example:3128" in shown and "mirror" in shown


def test_file_records_are_read_from_v1_top_level_and_v2_rafs():
    v1 = parse_config_text(json.dumps({**SEALER_JSON, "access_pattern": True,
                                       "latest_read_files": True}))
    assert (v1.iostats_files, v1.access_pattern, v1.latest_read_files) == (False, True, True)
    v2 = parse_config_text(V2_LOCALFS + "[rafs]\niostats_files = true\n")
    assert (v2.iostats_files, v2.access_pattern, v2.latest_read_files) == (True, False, False)
    assert v2.redacted()["rafs"]["iostats_files"] is True
    with pytest.raises(ConfigError, match="access_pattern"):
        parse_config_text(V2_LOCALFS + '[rafs]\naccess_pattern = "yes"\n')


def test_cache_encryption_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="enable_encryption"):
        parse_config_text(V2_LOCALFS + "[cache.filecache]\nwork_dir = \"/x\"\n"
                          "enable_encryption = true\n")
    v1 = json.loads(json.dumps(SEALER_JSON))
    v1["device"]["cache"]["config"]["enable_encryption"] = True
    with pytest.raises(ConfigError, match="enable_encryption"):
        parse_config_text(json.dumps(v1))
    v1["device"]["cache"]["config"]["enable_encryption"] = False
    assert parse_config_text(json.dumps(v1)).storage.cache_type == "blobcache"


def test_cache_compressed_is_accepted_and_said_to_be_not_done(caplog):
    """nydusd's `compressed` cache keeps chunks compressed on disk; pynydusd keeps them
    decompressed and says so, rather than ignore the key without a word."""
    import logging


    text = ('{"device": {"backend": {"type": "localfs", "config": {"dir": "/tmp"}}, "cache": '
            '{"type": "blobcache", "compressed": %s, "config": {"work_dir": "/tmp/c"}}}, '
            '"mode": "direct"}')
    with caplog.at_level(logging.WARNING, logger="daemon.config"):
        parse_config_text(text % "true")
    assert "keeps cached chunks decompressed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daemon.config"):
        parse_config_text(text % "false")
    assert caplog.text == ""
    with pytest.raises(ConfigError, match="'compressed' must be true or false"):
        parse_config_text(text % '"yes"')
