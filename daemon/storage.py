"""Storage facade: turns chunk pieces into bytes (fetcher, cache, backend) and runs prefetch.

This is the contract between the FUSE layer (daemon/fs.py) and the storage layer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import rafs

from .backends import make_backend
from .chunkcache import ChunkCache
from .fetcher import Fetcher
from .storage_errors import BackendError, StorageError

__all__ = ["BlobStore", "StorageError", "StorageOptions"]

log = logging.getLogger(__name__)

INLINE_LOCAL_BYTES = 256 << 10  # local chunk data a FUSE-loop read may fetch itself
INLINE_DISK_BYTES = 1 << 20  # cached chunk data a FUSE-loop read may read and digest-check itself
MERGE_LIMIT = 1 << 20  # chunks a read needs anyway are fetched in runs of up to this many bytes


@dataclass
class StorageOptions:
    """Everything storage needs, already normalised from the nydusd v1/v2 config and the CLI."""

    backend_type: str  # "registry" | "localfs" | "http-proxy" | "oss" | "s3" (others: clear error)
    backend_config: dict = field(default_factory=dict)  # the backend's own fields, as in nydusd's config
    cache_type: str = "blobcache"  # "blobcache" | "filecache" | "dummycache" | ""
    work_dir: str = "./cache"  # already resolved against the process cwd by the config layer
    cache_validate: bool = False  # accepted; what the disk cache gives back is always checked
    digest_validate: bool = False
    amplify_io: int = 1 << 20
    thread_num: int = 4  # worker threads for blocking work
    prefetch_enable: bool = False
    prefetch_threads: int = 8
    prefetch_merging_size: int = 1 << 20
    prefetch_bandwidth_rate: int = 0  # bytes/s, 0 = unlimited
    prefetch_all: bool = True
    prefetch_files: list[str] = field(default_factory=list)  # absolute paths inside the image
    memory_cache_bytes: int = 16 << 20  # in-memory LRU of hot decompressed chunks
    durable_cache: bool = False  # fdatasync chunk data before marking it ready


class BlobStore:
    """Serves file data of one image. Thread-safe; `read` blocks (call it from a worker thread)."""

    def __init__(self, image: rafs.Image, options: StorageOptions) -> None:
        self.image = image
        self.options = options
        for blob in image.blobs:
            if not rafs.is_valid_blob_id(blob.blob_id):
                raise StorageError(f"image names blob {blob.blob_id[:80]!r}, which is not 64 "
                                   "lowercase hex digits: refusing to use it in a path or URL")
        self.backend = make_backend(options.backend_type, options.backend_config)
        self.cache = None
        if options.cache_type in ("blobcache", "filecache"):
            os.makedirs(options.work_dir, exist_ok=True)
            self.cache = ChunkCache(options.work_dir, image.blobs, options.durable_cache)
        elif options.cache_type not in ("", "dummycache"):
            raise StorageError(f"cache type {options.cache_type!r} is not supported")
        self.fetcher = Fetcher(image, self.backend, self.cache,
                               digest_validate=options.digest_validate,
                               memory_bytes=options.memory_cache_bytes,
                               prepare_index=self._prepare_widening)
        self.prefetcher = None
        self.ci_loaded = False

    def _prepare_widening(self) -> None:
        """What chunk_by_index needs, loaded on the first widened read: v5 indexes its chunk
        records; v6 resolves neighbours through the bootstrap's chunk table, and fetches the
        blobs' ci tables only when that table is empty (saving a download of ~16 bytes per
        chunk of the whole blob for a reader that needs a few files)."""
        if self.image.version == 5 or not self.image.chunk_table_size:
            self.load_blob_meta()

    def load_blob_meta(self) -> None:
        """v6: fetch each blob's ci table and resolve chunks through it (best effort); v5: index the
        chunks by blob position, so that small reads can be widened (amplify_io)."""
        if self.ci_loaded:
            return
        if self.image.version == 5:
            if self.options.amplify_io > 0 and any(b.chunk_count for b in self.image.blobs):
                try:
                    self.image.build_chunk_index()
                except rafs.RafsError as e:
                    log.warning("cannot index the image's chunks (%s): reads are not widened", e)
            self.ci_loaded = True
            return
        from rafs.blobmeta import read_ci_table

        for blob in self.image.blobs:
            if not blob.ci_uncompressed_size or self.image.has_ci_table(blob.index):
                continue
            try:
                table = read_ci_table(blob, lambda o, n, b=blob: self.backend.read(b.blob_id, o, n))
            except (BackendError, rafs.RafsError) as e:
                log.warning("blob %s: cannot load its ci table (%s); using the bootstrap chunk table",
                            blob.blob_id, e)
                continue
            self.image.attach_ci_table(blob.index, table)
        self.ci_loaded = True

    def read(self, pieces: Sequence[rafs.ChunkPiece], ino: int | None = None,
             offset: int = 0, *, inline: bool = False) -> bytes:
        """The bytes of `pieces` concatenated (holes as zeros); raises StorageError on failure.
        With `inline` (the FUSE loop serving a read `can_read_now` allowed) a chunk of a remote
        backend that has since left memory (or that another thread has started fetching) raises
        WouldBlock instead of waiting: the caller hands the read to a thread. Local blobs are
        read inline, as `can_read_now` allows.

        `ino` and `offset` say which file the pieces were cut from and where: a read that goes on
        inside a file is then widened (amplify_io) only to that file's next chunks, so reading a
        few files whole does not pull in their neighbours; a read from a file's start may be
        widened along the blob (a reader going through the tree in order)."""
        chunks = [p.chunk for p in pieces if p.chunk is not None]
        amplify = self.options.amplify_io
        follow = None
        if ino is not None and offset > 0 and amplify > 0:
            def follow() -> list[rafs.ChunkInfo]:  # called only when a miss is widened
                end = offset + sum(p.length for p in pieces)
                return [p.chunk for p in self.image.chunks(ino, end, amplify) if p.chunk]
        got = self.fetcher.get_chunks(chunks, MERGE_LIMIT, amplify, follow,
                                      may_wait=not inline or self.backend.kind == "localfs",
                                      ) if chunks else {}
        out = []
        for p in pieces:
            if p.chunk is None:
                out.append(bytes(p.length))
            else:
                data = got[(p.chunk.blob_index, p.chunk.compressed_offset)]
                out.append(data[p.offset:p.offset + p.length])
        return b"".join(out)

    def can_read_now(self, pieces: Sequence[rafs.ChunkPiece]) -> bool:
        """True when `read(pieces)` cannot wait on the network or on another thread: every chunk
        is in memory or ready in the disk cache (up to INLINE_DISK_BYTES, which are read and
        digest-checked), or comes from local blobs (up to a small size) and nobody is fetching
        it. The FUSE loop then serves the read itself, saving the hand-off to a worker thread."""
        f = self.fetcher
        local = self.backend.kind == "localfs"
        budget = INLINE_LOCAL_BYTES
        disk_budget = INLINE_DISK_BYTES
        for p in pieces:
            c = p.chunk
            if c is None:
                continue
            key = (c.blob_index, c.compressed_offset)
            if key in f.mem:
                continue
            if key in f.flights:
                return False
            if self.cache is not None and self.cache.is_ready(c):
                disk_budget -= c.uncompressed_size  # read and hashed: large ones in a thread
                if disk_budget < 0:
                    return False
                continue
            budget -= c.compressed_size
            if not local or budget < 0:
                return False
        return True

    def start_prefetch(self) -> None:
        """Start background prefetch (prefetch table, listed files, then everything if prefetch_all)."""
        if not self.options.prefetch_enable or self.prefetcher is not None:
            return
        from .prefetch import Prefetcher

        self.prefetcher = Prefetcher(self.image, self.fetcher, self.options)
        self.prefetcher.start()

    def metrics(self) -> dict:
        """Counters: backend (requests, bytes, errors), cache (hits, misses), prefetch (done/total)."""
        f = dict(self.fetcher.stats)
        b = self.backend.snapshot()
        p = self.prefetcher.stats() if self.prefetcher else {}
        return {"backend_type": self.backend.metrics_kind, **b, **{f"fetch_{k}": v for k, v in f.items()},
                "whole_hits": f["mem_hits"] + f["disk_hits"], "partial_hits": 0,
                "total": f["mem_hits"] + f["disk_hits"] + f["misses"],
                "data_all_ready": bool(self.cache and self.cache.all_ready()),
                "underlying_files": self.cache.underlying_files() if self.cache else [],
                "store_path": self.options.work_dir if self.cache else "", **p}

    def close(self) -> None:
        """Stop prefetch, close backend connections and cache files."""
        if self.prefetcher is not None:
            self.prefetcher.stop()
        self.backend.close()
        if self.cache is not None:
            self.cache.close()
