"""Chunk fetcher: memory LRU -> disk cache -> merged range requests, one fetch per chunk.

Missing chunks of one read are grouped by blob, sorted by compressed offset and merged into as
few range requests as the layout allows (adjacent compressed ranges, up to a size limit). A chunk
being fetched by one thread is waited for, never fetched again, by the others (single flight).
Every chunk's decompressed size is checked. Its digest is checked when it comes from a remote
backend (the network is untrusted) or from the disk cache, and with `digest_validate` also from
localfs. The disk cache is shared by every image using the same work_dir, and blob ids come from
images: a hostile image can name another's blob and place its chunks elsewhere in the cache files,
or reset them under a running daemon, so what the disk gives back is never trusted (a chunk that
fails is fetched again and rewritten). A run whose data fails these checks is fetched again, up to
the backend's retry count, before the read fails.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import cachetools

from rafs import ChunkDataError, ChunkInfo, Image, codecs
from rafs.chunkmap import merge_runs
from rafs.model import CHUNK_SIZE_MAX

from .backends import Backend
from .chunkcache import ChunkCache
from .storage_errors import BackendError, StorageError, WouldBlock

log = logging.getLogger(__name__)

MEM_ENTRY_OVERHEAD = 240  # bytes object, key tuple and the LRU's dict and order entries


def _mem_size(data: bytes) -> int:
    """What a chunk costs the memory LRU: tiny chunks are mostly bookkeeping."""
    return len(data) + MEM_ENTRY_OVERHEAD


class _Flight:
    """One chunk being fetched: `done` is held until its data (or error) is set."""

    __slots__ = ("done", "data", "error")

    def __init__(self) -> None:
        self.done = threading.Lock()  # a lock, not an Event: a tenth of the cost per chunk
        self.done.acquire()
        self.data: bytes | None = None
        self.error: BaseException | None = None

    def wait(self) -> None:
        with self.done:
            pass

    def finish(self) -> None:
        self.done.release()


class Fetcher:
    """Serves decompressed chunks of one image; thread-safe."""

    def __init__(self, image: Image, backend: Backend, cache: ChunkCache | None, *,
                 digest_validate: bool, memory_bytes: int,
                 prepare_index: Callable[[], None] | None = None) -> None:
        self.image = image
        self.backend = backend
        self.cache = cache
        self.digest_validate = digest_validate
        self.verify_fetched = digest_validate or backend.kind != "localfs"
        self.data_retries = max(int(getattr(backend, "retries", 0) or 0), 1)
        # room for two of the largest chunks at least: a chunk the LRU cannot hold would be read
        # (and digest-checked) whole again for every request that touches it
        largest = min(max([image.chunk_size, *(b.chunk_size for b in image.blobs)]),
                      CHUNK_SIZE_MAX)
        self.mem: cachetools.LRUCache = cachetools.LRUCache(
            maxsize=max(memory_bytes, 2 * (largest + MEM_ENTRY_OVERHEAD)), getsizeof=_mem_size)
        self.lock = threading.Lock()
        self.flights: dict[tuple[int, int], _Flight] = {}
        self.prepare_index = prepare_index  # loads what chunk_by_index needs, on first widening
        self.last_fetched: dict[int, int] = {}  # blob index -> last chunk index fetched
        self.streak: dict[int, int] = {}  # blob index -> sequential misses in a row
        self.stats = {"mem_hits": 0, "disk_hits": 0, "misses": 0, "requests": 0,
                      "bytes_fetched": 0, "errors": 0, "bad_data": 0, "bad_cached": 0}
        self.bad_cached_blobs: set[int] = set()  # blobs whose bad cached chunks were logged

    def _key(self, c: ChunkInfo) -> tuple[int, int]:
        return (c.blob_index, c.compressed_offset)

    def cached(self, c: ChunkInfo) -> bytes | None:
        """The chunk from memory or disk, or None."""
        key = self._key(c)
        with self.lock:
            data = self.mem.get(key)
            if data is not None:
                self.stats["mem_hits"] += 1
                return data
        if self.cache is not None:
            data = self.cache.get(c)
            if data is None:
                if self.cache.is_ready(c):  # ready, yet short: another image shrank the files
                    self._bad_cached(c, "is cut short")
            elif codecs.digest(self.image.blobs[c.blob_index].digester, data) != c.digest:
                self._bad_cached(c, "fails its digest")
                data = None
            if data is not None:
                with self.lock:
                    self.stats["disk_hits"] += 1
                    self._remember(key, data)
                return data
        return None

    def _bad_cached(self, c: ChunkInfo, what: str) -> None:
        """A chunk marked ready on disk is not what this image says it is: unmark it, so that the
        fetched data replaces it. Logged once per blob (another image sharing the cache can make
        every chunk of a blob bad at once); `bad_cached` counts them all."""
        self.cache.forget(c)
        with self.lock:
            self.stats["bad_cached"] += 1
            first = c.blob_index not in self.bad_cached_blobs
            self.bad_cached_blobs.add(c.blob_index)
        if first:
            log.warning("blob %s: cached chunk %d %s: fetching it again (and any other such "
                        "chunk of this blob, counted in bad_cached)",
                        self.image.blobs[c.blob_index].blob_id, c.chunk_index, what)

    def _remember(self, key: tuple[int, int], data: bytes) -> None:
        """Keep a chunk in the memory LRU (caller holds the lock); chunks larger than it are not."""
        if _mem_size(data) <= self.mem.maxsize:
            self.mem[key] = data

    def present(self, c: ChunkInfo) -> bool:
        """In memory or ready on disk (no counters touched, nothing read)."""
        with self.lock:
            if self._key(c) in self.mem:
                return True
        return self.cache is not None and self.cache.is_ready(c)

    def get_chunks(self, chunks: Sequence[ChunkInfo], max_request: int, amplify: int = 0,
                   follow: Callable[[], Sequence[ChunkInfo]] | None = None,
                   may_wait: bool = True) -> dict[tuple[int, int], bytes]:
        """Data of every chunk, keyed by (blob_index, compressed_offset).

        Missing chunks are fetched in merged runs of at most `max_request` bytes; with `amplify`
        > 0 a sequential miss is also widened, up to `amplify` bytes: to `follow()` (the chunks
        that come next in the file being read) when given, else to the following chunks of the
        blob. Without `may_wait`, a missing chunk raises WouldBlock (nothing is fetched)."""
        out: dict[tuple[int, int], bytes] = {}
        missing = []
        for c in chunks:
            key = self._key(c)
            if key in out:
                continue
            data = self.cached(c)
            if data is None:
                missing.append(c)
            else:
                out[key] = data
        if missing:
            if not may_wait:
                raise WouldBlock
            self._fetch_missing(missing, max_request, amplify, out, follow)
        return out

    def _sequential(self, missing: list[ChunkInfo]) -> int:
        """How many misses in a row, this one included, continued the previous one in their blob
        (a sequential reader); 0 when this one does not."""
        with self.lock:
            for c in missing:
                if self.last_fetched.get(c.blob_index, -2) + 1 == c.chunk_index:
                    n = self.streak[c.blob_index] = self.streak.get(c.blob_index, 0) + 1
                    return n
            for c in missing:
                self.streak[c.blob_index] = 0
            return 0

    def _neighbours(self, missing: list[ChunkInfo], limit: int,
                    follow: Callable[[], Sequence[ChunkInfo]] | None = None) -> list[ChunkInfo]:
        """Chunks that follow the missing ones in their blob, not yet cached, up to `limit` bytes
        per run: a reader going through the blob in order also gets what it reads next
        (nydusd's amplify_io). Only done once the misses are sequential, and ramped up like the
        kernel's readahead: 4x the miss, then 4 times more at each further sequential miss, up to
        `limit`. Scattered reads, and two files that happen to be neighbours, fetch little more
        than they read."""
        streak = self._sequential(missing) if limit > 0 else 0
        if not streak:
            return []
        need = sum(c.compressed_size for c in missing)
        limit = min(limit, need << min(2 * streak, 40))
        if follow is not None:  # inside one file: its own next chunks, never the next files'
            extra, have, size = [], {self._key(c) for c in missing}, 0
            for n in follow():
                key = self._key(n)
                if key in have or self.present(n):
                    continue
                size += n.compressed_size
                if size > limit:
                    break
                extra.append(n)
                have.add(key)
            return extra
        by_index = getattr(self.image, "chunk_by_index", None)
        if by_index is None:
            return []
        if self.prepare_index is not None:
            prepare, self.prepare_index = self.prepare_index, None
            prepare()
        extra, have = [], {self._key(c) for c in missing}
        for c in missing:
            size, idx = c.compressed_size, c.chunk_index + 1
            while size < limit:
                n = by_index(c.blob_index, idx)
                if n is None or self._key(n) in have or self.present(n):
                    break
                size += n.compressed_size
                if size > limit:
                    break
                extra.append(n)
                have.add(self._key(n))
                idx += 1
        return extra

    def _fetch_missing(self, missing: list[ChunkInfo], max_request: int, amplify: int,
                       out: dict, follow: Callable[[], Sequence[ChunkInfo]] | None = None) -> None:
        wanted = {self._key(c) for c in missing}
        try:
            missing = missing + self._neighbours(missing, amplify, follow)
        except Exception as e:  # widening is an optimisation: never let it fail a read
            log.debug("not widening the read: %s", e)
        mine, theirs, owned = [], [], {}
        with self.lock:
            for c in missing:
                key = self._key(c)
                flight = self.flights.get(key)
                if flight is None:
                    self.flights[key] = owned[key] = _Flight()
                    mine.append(c)
                else:
                    theirs.append((key, flight))
        last: dict[int, int] = {}
        for c in mine:
            last[c.blob_index] = max(last.get(c.blob_index, -1), c.chunk_index)
        with self.lock:
            self.last_fetched.update(last)  # where each blob's reader is now
        try:
            for run in merge_runs(mine, max(max_request, amplify)):
                if any(self._key(c) in wanted for c in run):
                    self._fetch_run(run, out, wanted)
                    continue
                try:  # only neighbours: widening is an optimisation, never a reason to fail
                    self._fetch_run(run, out)
                except Exception as e:
                    log.debug("not prefetching neighbour chunks %d-%d of blob %d: %s",
                              run[0].chunk_index, run[-1].chunk_index, run[0].blob_index, e)
        finally:
            self._abort_unfinished(owned)
        for key, flight in theirs:
            if key not in wanted:
                continue  # a neighbour someone else is already fetching: not needed here
            flight.wait()
            if flight.error is not None:
                raise StorageError(f"chunk fetch failed: {flight.error}")
            out[key] = flight.data

    def _fetch_run(self, run: list[ChunkInfo], out: dict, wanted: set | None = None) -> None:
        """Fetch one run of adjacent chunks in one request, check and land each. A chunk whose
        data is bad fails the read only if it is `wanted` (None: all are), after the backend's
        retries; a bad neighbour that came along is dropped and the others land."""
        first, last = run[0], run[-1]
        start = first.compressed_offset
        size = last.compressed_offset + last.compressed_size - start
        blob = self.image.blobs[first.blob_index]
        digester = blob.digester if self.verify_fetched else None
        with self.lock:
            self.stats["misses"] += len(run)
        good: dict[int, bytes] = {}  # position in run -> checked data, kept across attempts
        errors: dict[int, ChunkDataError] = {}
        needed = [i for i, c in enumerate(run) if wanted is None or self._key(c) in wanted]
        for attempt in range(self.data_retries + 1):
            with self.lock:
                self.stats["requests"] += 1
            try:
                raw = self.backend.read(blob.blob_id, start, size, direct=bool(errors))
            except BackendError as e:
                with self.lock:
                    self.stats["errors"] += 1
                if attempt and all(i in good for i in needed):
                    break  # a retry for bad neighbours only: keep what came good before
                self._fail(run, e)
                raise
            with self.lock:
                self.stats["bytes_fetched"] += len(raw)
            for i, c in enumerate(run):
                if i in good:
                    continue
                try:
                    good[i] = codecs.decode_chunk(
                        c, raw[c.compressed_offset - start:
                               c.compressed_offset - start + c.compressed_size],
                        blob.compressor, digester)
                    errors.pop(i, None)
                except ChunkDataError as e:
                    errors[i] = e
            if not errors:
                break
            with self.lock:
                self.stats["errors"] += 1
                self.stats["bad_data"] += len(errors)
            if attempt < self.data_retries:
                # bad data, even a neighbour's: again (another read may be waiting for that
                # neighbour); only after the last attempt is a bad neighbour dropped
                log.warning("blob %s: %s; fetching again (%d/%d)", blob.blob_id,
                            next(iter(errors.values())), attempt + 1, self.data_retries)
                continue
            e = next((errors[i] for i in needed if i in errors), None)
            if e is not None:
                log.error("blob %s: %s (after %d attempts)", blob.blob_id, e, attempt + 1)
                self._fail(run, e)
                raise StorageError(str(e)) from None
        for i, e in errors.items():  # neighbours only: dropped, their waiters told
            log.warning("blob %s: %s; not keeping this unrequested chunk", blob.blob_id, e)
            self._fail([run[i]], e)
        for i, c in enumerate(run):
            data = good.get(i)
            if data is None:
                continue
            if self.cache is not None:
                self.cache.put(c, data)
            self._land(c, data)
            out[self._key(c)] = data

    def _land(self, c: ChunkInfo, data: bytes) -> None:
        key = self._key(c)
        with self.lock:
            self._remember(key, data)
            flight = self.flights.pop(key, None)
        if flight is not None:
            flight.data = data
            flight.finish()

    def _fail(self, run: list[ChunkInfo], error: BaseException) -> None:
        with self.lock:
            flights = [self.flights.pop(self._key(c), None) for c in run]
        for f in flights:
            if f is not None and f.done.locked():
                f.error = error
                f.finish()

    def _abort_unfinished(self, owned: dict[tuple[int, int], _Flight]) -> None:
        """Release waiters of chunks this thread claimed but did not land (error paths). Only its
        own flights: once it landed a chunk, another thread may be fetching that chunk anew."""
        with self.lock:
            left = [self.flights.pop(key) for key, flight in owned.items()
                    if self.flights.get(key) is flight]
        for f in left:
            f.error = StorageError("fetch aborted")
            f.finish()
