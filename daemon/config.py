"""nydusd configuration files (v2 JSON, v2 TOML, v1 JSON) -> StorageOptions and fs options.

Tried in nydusd's order: v2 JSON, v2 TOML, v1 JSON. Unknown keys are ignored everywhere;
omitted keys take upstream's defaults (note v1 `prefetch_all` defaults to true, v2 to false);
relative paths resolve against the process's working directory.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from dataclasses import dataclass, field

from .backends import no_userinfo, url_for_log
from .mirrors import MirrorConfigError, parse_mirrors
from .storage import StorageOptions

log = logging.getLogger(__name__)

BACKENDS = ("registry", "localfs", "oss", "s3", "http-proxy", "localdisk")
CACHES = ("blobcache", "filecache", "fscache", "dummycache", "")
LEVELS = ("trace", "debug", "info", "warn", "error")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


@dataclass
class DaemonConfig:
    """The parts of a nydusd config the daemon uses."""

    id: str = ""
    storage: StorageOptions = field(default_factory=lambda: StorageOptions("localfs"))
    enable_xattr: bool = False
    mode: str = "direct"
    version: int = 1
    raw: dict = field(default_factory=dict)
    iostats_files: bool = False  # per-file counters (GET /api/v1/metrics/files)
    access_pattern: bool = False  # per-file read count and first read (/api/v1/metrics/pattern)
    latest_read_files: bool = False  # files read since the last /api/v1/metrics/files?latest=true

    def redacted(self) -> dict:
        """The backend config with secrets blanked, for logs and the API."""
        cfg = dict(self.storage.backend_config)
        for key in _SECRETS:
            if cfg.get(key):
                cfg[key] = ""
        if isinstance(cfg.get("host"), str):
            cfg["host"] = no_userinfo(cfg["host"])
        if isinstance(cfg.get("addr"), str) and cfg["addr"].startswith(("http://", "https://")):
            cfg["addr"] = url_for_log(cfg["addr"])
        if isinstance(cfg.get("proxy"), dict):
            cfg["proxy"] = {**cfg["proxy"], **{k: url_for_log(cfg["proxy"][k]) for k in (
                "url", "ping_url") if isinstance(cfg["proxy"].get(k), str)}}
        if isinstance(cfg.get("mirrors"), list):  # their headers and URLs carry credentials too
            cfg["mirrors"] = [
                {**m, "headers": {k: "" for k in m.get("headers") or {}}
                 if isinstance(m.get("headers"), dict) else m.get("headers"),
                 **{k: url_for_log(m[k]) for k in ("host", "ping_url")
                    if isinstance(m.get(k), str)}}
                if isinstance(m, dict) else m for m in cfg["mirrors"]]
        st = self.storage
        cache: dict = {"type": st.cache_type, "validate": st.cache_validate}
        if st.cache_type in ("blobcache", "filecache"):
            cache["filecache"] = {"work_dir": st.work_dir}
        prefetch = {"enable": st.prefetch_enable, "threads": st.prefetch_threads,
                    "batch_size": st.prefetch_merging_size,
                    "bandwidth_limit": st.prefetch_bandwidth_rate, "prefetch_all": st.prefetch_all}
        return {"version": 2, "id": self.id,  # nydusd renders the config as v2 JSON
                "backend": {"type": st.backend_type, st.backend_type: cfg},
                "cache": {**cache, "prefetch": prefetch},
                "rafs": {"mode": self.mode, "batch_size": st.amplify_io,
                         "validate": st.digest_validate, "enable_xattr": self.enable_xattr,
                         "iostats_files": self.iostats_files, "access_pattern": self.access_pattern,
                         "latest_read_files": self.latest_read_files, "prefetch": prefetch}}


def _bool(d: dict, key: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"'{key}' must be true or false, not {v!r}")
    return v


def _int(d: dict, key: str, default: int, lo: int = 0, hi: int = 1 << 40) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"'{key}' must be an integer in {lo}..{hi}, not {v!r}")
    return v


def _section(d: dict, key: str) -> dict:
    """d[key] as a dict ({} when absent or null); anything else is an error naming the key."""
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"'{key}' must be an object, not {type(v).__name__} {str(v)[:40]!r}")
    return v


def _str(d: dict, key: str, default: str = "") -> str:
    v = d.get(key, default)
    if v is None:
        return default
    if not isinstance(v, str):
        shown = f"a value of type {type(v).__name__}" if key in _SECRETS else repr(v)
        raise ConfigError(f"'{key}' must be a string, not {shown}")
    return v


_SECRETS = ("auth", "registry_token", "access_key_id", "access_key_secret", "password")


def _strings(d: dict, key: str) -> list[str]:
    v = d.get(key) or []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"'{key}' must be a list of strings, not {v!r:.60}")
    return v


def _seconds(d: dict, key: str, default: float) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1 << 31:
        raise ConfigError(f"'{key}' must be a number of seconds, not {v!r}")
    return v


# the typed fields of each backend's config (upstream rejects a config whose field has the wrong
# type; a string "false" must never pass for false, least of all in skip_verify)
_HTTP_FIELDS = {"skip_verify": lambda d, k: _bool(d, k, False),
                "timeout": lambda d, k: _seconds(d, k, 5),
                "connect_timeout": lambda d, k: _seconds(d, k, 5),
                "retry_limit": lambda d, k: _int(d, k, 0, 0, 1000),
                "ca_cert_files": _strings}
_FIELDS = {
    "registry": {"scheme": _str, "host": _str, "repo": _str, "auth": _str, "registry_token": _str,
                 "blob_url_scheme": _str, "blob_redirected_host": _str, **_HTTP_FIELDS},
    "localfs": {"dir": _str, "blob_file": _str},
    "http-proxy": {"addr": _str, "path": _str, **_HTTP_FIELDS},
    "oss": {"endpoint": _str, "bucket_name": _str, "scheme": _str, "object_prefix": _str,
            "access_key_id": _str, "access_key_secret": _str, **_HTTP_FIELDS},
    "s3": {"endpoint": _str, "region": _str, "bucket_name": _str, "scheme": _str,
           "object_prefix": _str, "access_key_id": _str, "access_key_secret": _str,
           **_HTTP_FIELDS},
}
# the backends with proxy, mirrors (not oss and s3) and TLS options
HTTP_BACKENDS = ("registry", "http-proxy", "oss", "s3")


def _backend(kind: str, cfg: dict) -> tuple[str, dict]:
    if not isinstance(kind, str) or kind not in BACKENDS:
        raise ConfigError(f"unknown backend type {kind!r}")
    if kind not in _FIELDS:
        raise ConfigError(f"backend type {kind!r} is not supported by pynydusd (registry, "
                          "http-proxy, localfs, oss, s3)")
    if cfg is not None and not isinstance(cfg, dict):
        raise ConfigError(f"the {kind} backend's config must be an object, not {cfg!r:.40}")
    cfg = dict(cfg or {})
    for key, check in _FIELDS[kind].items():
        if cfg.get(key) is not None:
            check(cfg, key)
    if kind in HTTP_BACKENDS:
        proxy = _section(cfg, "proxy")
        _str(proxy, "url")
        _str(proxy, "ping_url")
        for key in ("fallback", "use_http"):
            if key in proxy:
                _bool(proxy, key, True)
        if "check_interval" in proxy:
            _seconds(proxy, "check_interval", 5)
        try:
            parse_mirrors(cfg.get("mirrors"), warn=False)
        except MirrorConfigError as e:
            raise ConfigError(str(e)) from None
        if cfg.get("blob_url_scheme") not in (None, "", "http", "https"):
            raise ConfigError(f"'blob_url_scheme' must be http or https, not "
                              f"{cfg['blob_url_scheme']!r:.40}")
    if kind == "localfs" and not all(isinstance(x, str) for x in cfg.get("alt_dirs") or []):
        raise ConfigError("'alt_dirs' must be a list of strings")
    if kind in ("oss", "s3") and cfg.get("mirrors"):  # (the rest is checked by the backend)
        raise ConfigError(f"'mirrors' are for the registry and http-proxy backends, not {kind}")
    if kind == "registry" and (not cfg.get("host") or not cfg.get("repo")):
        raise ConfigError("registry backend needs 'host' and 'repo'")
    if kind == "http-proxy":
        addr = cfg.get("addr") or ""
        if addr.startswith(("http://", "https://")):
            try:
                parts = urllib.parse.urlsplit(addr)
                parts.port  # noqa: B018 - a bad port raises here
            except ValueError:
                raise ConfigError(f"http-proxy 'addr' is not a URL: {addr[:80]!r}") from None
            if not parts.hostname:
                raise ConfigError(f"http-proxy 'addr' has no host: {addr[:80]!r}")
        elif not os.path.isabs(addr):
            raise ConfigError("http-proxy backend needs 'addr': an http:// or https:// URL or "
                              "the absolute path of a Unix socket")
    if kind == "localfs":
        if not cfg.get("dir") and not cfg.get("blob_file"):
            raise ConfigError("localfs backend needs 'dir' or 'blob_file'")
        for key in ("dir", "blob_file"):
            if cfg.get(key):
                cfg[key] = os.path.abspath(cfg[key])
    return kind, cfg


def _compressed(cache: dict) -> None:
    """nydusd's `cache.compressed` (keep chunks compressed on disk) is not done here: said once."""
    if _bool(cache, "compressed", False):
        log.warning("cache 'compressed': pynydusd keeps cached chunks decompressed (they take "
                    "more disk; reads need no decompression)")


def _cache(kind: str, cfg: dict, opts: StorageOptions) -> None:
    if not isinstance(kind, str) or kind not in CACHES:
        raise ConfigError(f"unknown cache type {kind!r}")
    if kind == "fscache":
        raise ConfigError("cache type 'fscache' is for the kernel fscache mode, not FUSE")
    opts.cache_type = kind
    if kind in ("blobcache", "filecache") and _bool(cfg, "enable_encryption", False):
        raise ConfigError("'enable_encryption': pynydusd cannot encrypt its cache, and will not "
                          "keep image data unencrypted when the config asks for encryption")
    if kind in ("blobcache", "filecache"):
        work_dir = _str(cfg, "work_dir", ".")
        if not work_dir:
            raise ConfigError(f"cache type {kind!r} needs a non-empty 'work_dir'")
        opts.work_dir = os.path.abspath(work_dir)


def _prefetch(p: dict, opts: StorageOptions, v1: bool, workers: dict | None = None) -> None:
    """Prefetch settings: what to prefetch from `p`, the workers (threads, request size, rate)
    from `workers` (v2's [cache.prefetch]) when given, else from `p` too."""
    w = p if workers is None else workers
    opts.prefetch_enable = _bool(p, "enable", False)
    threads = "threads_count" if v1 else "threads"
    opts.prefetch_threads = (_int(w, threads, 8, 1, 1024) if opts.prefetch_enable
                             else _int(w, threads, 8, 0, 1 << 20) or 8)
    opts.prefetch_merging_size = _int(w, "merging_size" if v1 else "batch_size", 1 << 20, 0, 256 << 20)
    opts.prefetch_bandwidth_rate = _int(w, "bandwidth_rate" if v1 else "bandwidth_limit", 0)
    opts.prefetch_all = _bool(p, "prefetch_all", v1)


def parse_v1(d: dict) -> DaemonConfig:
    """A nydusd v1 JSON config (what sealer's httpserver.json is)."""
    device = d.get("device")
    if not isinstance(device, dict) or not isinstance(device.get("backend"), dict):
        raise ConfigError("v1 config needs 'device.backend'")
    if d.get("mode") not in ("direct", "cached"):
        raise ConfigError(f"'mode' must be 'direct' or 'cached', not {d.get('mode')!r:.40}")
    backend = device["backend"]
    if backend.get("type") == "http-proxy":
        raise ConfigError("backend type 'http-proxy' needs a v2 config (nydusd's v1 configs do "
                          "not take it)")
    kind, cfg = _backend(backend.get("type", ""), backend.get("config"))
    opts = StorageOptions(kind, cfg)
    cache = _section(device, "cache")
    _cache(cache.get("type", ""), _section(cache, "config"), opts)
    opts.cache_validate = _bool(cache, "validate", False)
    _compressed(cache)
    opts.digest_validate = _bool(d, "digest_validate", False)
    opts.amplify_io = _int(d, "amplify_io", 1 << 20, 0, 256 << 20)
    _prefetch(_section(d, "fs_prefetch"), opts, v1=True)
    return DaemonConfig(_str(device, "id"), opts, _bool(d, "enable_xattr", False), d["mode"], 1, d,
                        *_file_stats(d))


def parse_v2(d: dict) -> DaemonConfig:
    """A nydusd v2 config (TOML or JSON), `version = 2`."""
    if d.get("version") != 2:
        raise ConfigError("not a v2 config")
    backend = _section(d, "backend")
    kind = _str(backend, "type")
    kind, cfg = _backend(kind, backend.get(kind.replace("-", "_"), backend.get(kind)))
    opts = StorageOptions(kind, cfg)
    cache = _section(d, "cache")
    ckind = _str(cache, "type")
    # blobcache is filecache: its work_dir lives in [cache.filecache]
    _cache(ckind, _section(cache, ckind) or (_section(cache, "filecache")
                                             if ckind == "blobcache" else {}), opts)
    opts.cache_validate = _bool(cache, "validate", False)
    _compressed(cache)
    rafs_cfg = _section(d, "rafs")
    mode = rafs_cfg.get("mode", "direct")
    if mode not in ("direct", "cached"):
        raise ConfigError(f"'rafs.mode' must be 'direct' or 'cached', not {mode!r:.40}")
    opts.digest_validate = _bool(rafs_cfg, "validate", False)
    opts.amplify_io = _int(rafs_cfg, "batch_size", 1 << 20, 0, 256 << 20)
    # [rafs.prefetch] says what to prefetch, [cache.prefetch] drives the workers
    fs_p, st_p = _section(rafs_cfg, "prefetch"), _section(cache, "prefetch")
    _prefetch(fs_p or st_p, opts, v1=False, workers=st_p or fs_p)
    return DaemonConfig(_str(d, "id"), opts, _bool(rafs_cfg, "enable_xattr", False), mode, 2, d,
                        *_file_stats(rafs_cfg))


def _file_stats(d: dict) -> tuple[bool, bool, bool]:
    """iostats_files, access_pattern, latest_read_files (v1: top level; v2: [rafs])."""
    return (_bool(d, "iostats_files", False), _bool(d, "access_pattern", False),
            _bool(d, "latest_read_files", False))


def load_config(path: str) -> DaemonConfig:
    """Read and parse a config file as nydusd does (v2 JSON, v2 TOML, then v1 JSON)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    return parse_config_text(text, path)


def parse_config_text(text: str, name: str = "config") -> DaemonConfig:
    """Parse config text; the error names the last parser's complaint."""
    errors = []
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as e:
        d = None
        errors.append(f"JSON: {e}")
    if d is None:
        import tomllib

        try:
            d = tomllib.loads(text)
        except (ValueError, RecursionError) as e:
            errors.append(f"TOML: {e}")
            raise ConfigError(f"failed to parse configuration information in {name}: "
                              + "; ".join(errors)) from None
    if not isinstance(d, dict):
        raise ConfigError(f"{name}: configuration must be an object")
    if d.get("version") == 2:
        return parse_v2(d)
    try:
        return parse_v1(d)
    except ConfigError as e:
        version = d.get("version")
        if version is None or version == 1:
            raise
        said = "the string '2'" if version == "2" else repr(str(version)[:20])
        raise ConfigError(f"{e} (read as v1: 'version' is {said}, not the number 2 of the v2 "
                          "format)") from None
