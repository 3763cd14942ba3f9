"""nydusd configuration files (v2 JSON, v2 TOML, v1 JSON) -> StorageOptions and fs options.

Tried in nydusd's order: v2 JSON, v2 TOML, v1 JSON. Unknown keys are ignored everywhere;
omitted keys take upstream's defaults (note v1 `prefetch_all` defaults to true, v2 to false);
relative paths resolve against the process's working directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .storage import StorageOptions

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

    def redacted(self) -> dict:
        """The backend config with secrets blanked, for logs and the API."""
        cfg = dict(self.storage.backend_config)
        for key in ("auth", "registry_token", "access_key_id", "access_key_secret", "password"):
            if cfg.get(key):
                cfg[key] = ""
        return {"backend": {"type": self.storage.backend_type, "config": cfg},
                "cache": {"type": self.storage.cache_type, "work_dir": self.storage.work_dir}}


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


def _backend(kind: str, cfg: dict) -> tuple[str, dict]:
    if kind not in BACKENDS:
        raise ConfigError(f"unknown backend type {kind!r}")
    if kind not in ("registry", "localfs"):
        raise ConfigError(f"backend type {kind!r} is not supported by pynydusd (registry, localfs)")
    cfg = dict(cfg or {})
    if kind == "registry" and (not cfg.get("host") or not cfg.get("repo")):
        raise ConfigError("registry backend needs 'host' and 'repo'")
    if kind == "localfs":
        if not cfg.get("dir") and not cfg.get("blob_file"):
            raise ConfigError("localfs backend needs 'dir' or 'blob_file'")
        for key in ("dir", "blob_file"):
            if cfg.get(key):
                cfg[key] = os.path.abspath(cfg[key])
    return kind, cfg


def _cache(kind: str, cfg: dict, opts: StorageOptions) -> None:
    if kind not in CACHES:
        raise ConfigError(f"unknown cache type {kind!r}")
    if kind == "fscache":
        raise ConfigError("cache type 'fscache' is for the kernel fscache mode, not FUSE")
    opts.cache_type = kind
    if kind in ("blobcache", "filecache"):
        work_dir = (cfg or {}).get("work_dir", ".")
        if not work_dir:
            raise ConfigError(f"cache type {kind!r} needs a non-empty 'work_dir'")
        opts.work_dir = os.path.abspath(work_dir)


def _prefetch(p: dict, opts: StorageOptions, v1: bool) -> None:
    opts.prefetch_enable = _bool(p, "enable", False)
    opts.prefetch_threads = _int(p, "threads_count" if v1 else "threads", 8, 1, 1024)
    opts.prefetch_merging_size = _int(p, "merging_size" if v1 else "batch_size", 1 << 20, 0, 256 << 20)
    opts.prefetch_bandwidth_rate = _int(p, "bandwidth_rate" if v1 else "bandwidth_limit", 0)
    opts.prefetch_all = _bool(p, "prefetch_all", v1)


def parse_v1(d: dict) -> DaemonConfig:
    """A nydusd v1 JSON config (what sealer's httpserver.json is)."""
    device = d.get("device")
    if not isinstance(device, dict) or not isinstance(device.get("backend"), dict):
        raise ConfigError("v1 config needs 'device.backend'")
    if d.get("mode") not in ("direct", "cached"):
        raise ConfigError(f"'mode' must be 'direct' or 'cached', not {d.get('mode')!r}")
    backend = device["backend"]
    kind, cfg = _backend(backend.get("type", ""), backend.get("config", {}))
    opts = StorageOptions(kind, cfg)
    cache = device.get("cache") or {}
    _cache(cache.get("type", ""), cache.get("config", {}), opts)
    opts.cache_validate = _bool(cache, "validate", False)
    opts.digest_validate = _bool(d, "digest_validate", False)
    opts.amplify_io = _int(d, "amplify_io", 1 << 20)
    _prefetch(d.get("fs_prefetch") or {}, opts, v1=True)
    return DaemonConfig(device.get("id", ""), opts, _bool(d, "enable_xattr", False), d["mode"], 1, d)


def parse_v2(d: dict) -> DaemonConfig:
    """A nydusd v2 config (TOML or JSON), `version = 2`."""
    if d.get("version") != 2:
        raise ConfigError("not a v2 config")
    backend = d.get("backend") or {}
    kind = backend.get("type", "")
    kind, cfg = _backend(kind, backend.get(kind.replace("-", "_"), backend.get(kind, {})))
    opts = StorageOptions(kind, cfg)
    cache = d.get("cache") or {}
    ckind = cache.get("type", "")
    _cache(ckind, cache.get(ckind, {}), opts)
    opts.cache_validate = _bool(cache, "validate", False)
    rafs_cfg = d.get("rafs") or {}
    mode = rafs_cfg.get("mode", "direct")
    if mode not in ("direct", "cached"):
        raise ConfigError(f"'rafs.mode' must be 'direct' or 'cached', not {mode!r}")
    opts.digest_validate = _bool(rafs_cfg, "validate", False)
    opts.amplify_io = _int(rafs_cfg, "batch_size", 1 << 20, 0, 256 << 20)
    _prefetch(rafs_cfg.get("prefetch") or cache.get("prefetch") or {}, opts, v1=False)
    return DaemonConfig(d.get("id", ""), opts, _bool(rafs_cfg, "enable_xattr", False), mode, 2, d)


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
    except ValueError as e:
        d = None
        errors.append(f"JSON: {e}")
    if d is None:
        import tomllib

        try:
            d = tomllib.loads(text)
        except ValueError as e:
            errors.append(f"TOML: {e}")
            raise ConfigError(f"failed to parse configuration information in {name}: "
                              + "; ".join(errors)) from None
    if not isinstance(d, dict):
        raise ConfigError(f"{name}: configuration must be an object")
    return parse_v2(d) if d.get("version") == 2 else parse_v1(d)
