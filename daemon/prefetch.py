"""Background prefetch: the image's prefetch table, listed files, then (prefetch_all) everything.

Runs in daemon threads at a bounded rate (token bucket). Foreground reads never queue behind it:
they only share an in-flight fetch of the very same chunk (single flight in the fetcher).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from rafs import ChunkInfo, Image, RafsError
from rafs.chunkmap import merge_runs

from .fetcher import Fetcher
from .storage_errors import StorageError

YIELD_EVERY = 16  # files the prefetch walk takes between giving up the GIL

log = logging.getLogger(__name__)


class TokenBucket:
    """Bytes-per-second limiter shared by the prefetch workers (rate 0 = unlimited)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int, stop: threading.Event) -> None:
        if self.rate <= 0:
            return
        while not stop.is_set():
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= min(n, self.rate):
                    self.tokens -= n
                    return
                wait = (min(n, self.rate) - self.tokens) / self.rate
            stop.wait(min(wait, 0.5))


class Prefetcher:
    """Pulls chunks in the background until the whole image (or the asked part) is cached."""

    def __init__(self, image: Image, fetcher: Fetcher, options) -> None:
        self.image = image
        self.fetcher = fetcher
        self.options = options
        self.stop_event = threading.Event()
        self.bucket = TokenBucket(options.prefetch_bandwidth_rate)
        self.lock = threading.RLock()  # the run generator counts under the lock _next holds
        self.done = self.total = self.requests = self.bytes = self.errors = 0
        self.begin = self.end = 0.0
        self.threads: list[threading.Thread] = []
        self.running = 0  # workers not yet finished
        self.queue: Iterator[list[ChunkInfo]] | None = None

    def start(self) -> None:
        self.begin = time.time()
        self.queue = self._runs()
        self.running = max(1, self.options.prefetch_threads)
        for i in range(self.running):
            t = threading.Thread(target=self._worker, name=f"prefetch-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def _files(self) -> Iterator[tuple[int, int]]:
        """(stage, inode number) of regular files to prefetch, in priority order (may repeat):
        stage 0 the image's prefetch table, 1 the listed files, 2 everything else."""
        for ino in self.image.prefetch:
            yield from ((0, i) for i in self._subtree(ino))
        for path in self.options.prefetch_files:
            try:
                ino = self._resolve(path)
            except RafsError as e:
                log.warning("prefetch: cannot resolve %s: %s", path, e)
                continue
            if ino is not None:
                yield from ((1, i) for i in self._subtree(ino))
        if self.options.prefetch_all:
            yield from ((2, i) for i in self._subtree(self.image.root_ino))

    def _resolve(self, path: str) -> int | None:
        ino = self.image.root_ino
        for part in path.encode().strip(b"/").split(b"/"):
            if part:
                inode = self.image.lookup(ino, part)
                if inode is None:
                    log.warning("prefetch: %s not found in the image", path)
                    return None
                ino = inode.ino
        return ino

    def _subtree(self, ino: int) -> Iterator[int]:
        """Regular files under `ino`; a directory the image cannot list is skipped (logged)."""
        stack = [ino]
        while stack and not self.stop_event.is_set():
            node = stack.pop()
            try:
                inode = self.image.getattr(node)
                children = list(self.image.readdir(node)) if inode.is_dir else []
            except RafsError as e:
                self._skip("inode", node, e)
                continue
            if inode.is_reg:
                yield node
            for _name, child, _pos in children:
                if child.is_dir:
                    stack.append(child.ino)
                elif child.is_reg:
                    yield child.ino

    def _skip(self, what: str, ino: int, e: Exception) -> None:
        log.warning("prefetch: skipping %s %d: %s", what, ino, e)
        with self.lock:
            self.errors += 1

    def _runs(self) -> Iterator[list[ChunkInfo]]:
        seen: set[tuple[int, int]] = set()
        batch: list[ChunkInfo] = []
        current = 0
        for n, (stage, ino) in enumerate(self._files()):
            if n % YIELD_EVERY == 0:
                time.sleep(0)  # let a waiting FUSE thread have the GIL now, not at the switch interval
            if stage != current and batch:  # never let later stages overtake earlier ones
                yield from merge_runs(batch, self.options.prefetch_merging_size)
                batch = []
            current = stage
            try:
                chunks = self.image.file_chunks(ino)
            except RafsError as e:  # one bad file: the others are still worth having
                self._skip("file", ino, e)
                continue
            for c in chunks:
                key = (c.blob_index, c.compressed_offset)
                if key in seen:
                    continue
                seen.add(key)
                with self.lock:
                    self.total += 1
                batch.append(c)
            if len(batch) >= 64:
                yield from merge_runs(batch, self.options.prefetch_merging_size)
                batch = []
        if batch:
            yield from merge_runs(batch, self.options.prefetch_merging_size)

    def _next(self) -> list[ChunkInfo] | None:
        with self.lock:
            try:
                return next(self.queue)
            except StopIteration:
                return None

    def _worker(self) -> None:
        try:
            while not self.stop_event.is_set():
                run = self._next()
                if run is None:
                    break
                try:
                    self._prefetch_run(run)
                except Exception:  # one run's surprise (a bug, a full disk): go on with the next
                    log.exception("prefetch of %d chunks failed", len(run))
                    with self.lock:
                        self.errors += 1
        except Exception:  # the walk itself failed: nothing more to prefetch
            log.exception("prefetch stopped")
        finally:
            with self.lock:
                self.running -= 1
                last = self.running == 0
            if last:  # the last worker out: all on disk for good, now (not under the lock)
                if self.fetcher.cache is not None:
                    self.fetcher.cache.commit()
                with self.lock:
                    self.end = time.time()
                    log.info("prefetch finished: %d/%d chunks, %d requests, %d bytes, %d errors",
                             self.done, self.total, self.requests, self.bytes, self.errors)

    def _prefetch_run(self, run: list[ChunkInfo]) -> None:
        todo = [c for c in run if not self.fetcher.present(c)]
        if todo:
            size = sum(c.compressed_size for c in todo)
            self.bucket.take(size, self.stop_event)
            if self.stop_event.is_set():  # the bucket let go because we stop: no more fetching
                return
            try:
                self.fetcher.get_chunks(todo, self.options.prefetch_merging_size)
                with self.lock:
                    self.requests += 1
                    self.bytes += size
            except StorageError as e:
                log.warning("prefetch of %d chunks failed: %s", len(todo), e)
                with self.lock:
                    self.errors += 1
        with self.lock:
            self.done += len(run)

    def stats(self) -> dict:
        with self.lock:
            return {"prefetch_workers": len(self.threads), "prefetch_done": self.done,
                    "prefetch_total": self.total, "prefetch_requests_count": self.requests,
                    "prefetch_data_amount": self.bytes, "prefetch_errors": self.errors,
                    "prefetch_unmerged_chunks": self.done,
                    "prefetch_cumulative_time_millis": int(
                        ((self.end or time.time()) - self.begin) * 1000) if self.begin else 0,
                    "prefetch_begin_time_secs": int(self.begin),
                    "prefetch_begin_time_millis": int(self.begin % 1 * 1000),
                    "prefetch_end_time_secs": int(self.end),
                    "prefetch_end_time_millis": int(self.end % 1 * 1000)}

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the workers, waiting for them up to `timeout` seconds in all (they are daemon
        threads: one stuck in a request does not hold up the exit)."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
