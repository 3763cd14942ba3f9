"""Storage facade: turns chunk pieces into bytes (cache, fetcher, backend) and runs prefetch.

This is the contract between the FUSE layer (daemon/fs.py) and the storage layer. The storage
helper fills in the implementation behind these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import rafs


class StorageError(OSError):
    """A read could not be served (backend down after retries, bad data, ...): the FUSE layer answers EIO."""


@dataclass
class StorageOptions:
    """Everything storage needs, already normalised from the nydusd v1/v2 config and the CLI."""

    backend_type: str  # "registry" | "localfs" (others: clear error)
    backend_config: dict = field(default_factory=dict)  # the backend's own fields, as in nydusd's config
    cache_type: str = "blobcache"  # "blobcache" | "filecache" | "dummycache" | ""
    work_dir: str = "./cache"  # already resolved against the process cwd by the config layer
    cache_validate: bool = False
    digest_validate: bool = False
    amplify_io: int = 1 << 20
    thread_num: int = 4  # worker threads for blocking work
    prefetch_enable: bool = False
    prefetch_threads: int = 8
    prefetch_merging_size: int = 1 << 20
    prefetch_bandwidth_rate: int = 0  # bytes/s, 0 = unlimited
    prefetch_all: bool = True
    prefetch_files: list[str] = field(default_factory=list)  # absolute paths inside the image
    memory_cache_bytes: int = 64 << 20  # in-memory LRU of hot decompressed chunks


class BlobStore:
    """Serves file data of one image. Thread-safe; `read` blocks (call it from a worker thread)."""

    def __init__(self, image: rafs.Image, options: StorageOptions) -> None:
        raise NotImplementedError

    def read(self, pieces: Sequence[rafs.ChunkPiece]) -> bytes:
        """The bytes of `pieces` concatenated (holes as zeros); raises StorageError on failure."""
        raise NotImplementedError

    def start_prefetch(self) -> None:
        """Start background prefetch (prefetch table, listed files, then everything if prefetch_all)."""
        raise NotImplementedError

    def metrics(self) -> dict:
        """Counters: backend (requests, bytes, errors), cache (hits, misses), prefetch (done/total)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop prefetch, close backend connections and cache files."""
        raise NotImplementedError
