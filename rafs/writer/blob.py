"""Blob writer: chunk file data, compress, deduplicate by digest, name the blob by its sha256."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator

from .. import codecs
from ..errors import RafsError
from ..model import CHUNK_COMPRESSED, ChunkInfo


class BlobWriter:
    """Appends chunks to a temporary blob file; `finish` seals it and names it by its sha256,
    `published` puts it in place under that name while the bootstrap naming it is written."""

    def __init__(self, blob_dir: str, compressor: str, digester: str, chunk_size: int,
                 align: int = 1) -> None:
        os.makedirs(blob_dir, exist_ok=True)
        self.blob_dir = blob_dir
        self.compressor, self.digester = compressor, digester
        self.chunk_size, self.align = chunk_size, align
        fd, self.tmp = tempfile.mkstemp(prefix=".blob-", dir=blob_dir)
        self.f = os.fdopen(fd, "wb")
        self.sha = hashlib.sha256()
        self.c_off = self.d_off = 0
        self.chunks: dict[bytes, ChunkInfo] = {}
        self.count = 0
        self.progress = None  # optional callable(bytes of one file), e.g. a progress bar
        self.final: str | None = None  # where the sealed blob goes (finish)

    def add(self, data: bytes) -> ChunkInfo:
        """Store one chunk (or reuse an identical one); return its record."""
        digest = codecs.digest(self.digester, data)
        known = self.chunks.get(digest)
        if known is not None and known.uncompressed_size == len(data):
            return known
        packed = codecs.compress(self.compressor, data) if self.compressor != "none" else data
        flags = CHUNK_COMPRESSED
        if len(packed) >= len(data):
            packed, flags = data, 0
        self.f.write(packed)
        self.sha.update(packed)
        info = ChunkInfo(0, self.count, flags, self.c_off, len(packed), self.d_off, len(data), digest)
        self.count += 1
        self.c_off += len(packed)
        self.d_off += -(-len(data) // self.align) * self.align
        self.chunks[digest] = info
        return info

    def add_file(self, path: str, size: int) -> list[ChunkInfo]:
        """Chunk a whole file; the file must still have `size` bytes when read."""
        out = []
        try:
            with open(path, "rb") as f:
                for off in range(0, size, self.chunk_size):
                    data = f.read(min(self.chunk_size, size - off))
                    if len(data) != min(self.chunk_size, size - off):
                        raise RafsError(f"{path} changed during the build (shrank)")
                    out.append(self.add(data))
                if f.read(1):
                    raise RafsError(f"{path} changed during the build (grew)")
        except OSError as e:
            raise RafsError(f"cannot read {path}: {e.strerror}") from None
        if self.progress is not None:
            self.progress(size)
        return out

    def append_raw(self, data: bytes) -> int:
        """Append non-chunk bytes (ci table, headers); returns their offset in the blob.

        The first call also records sha256(chunk data + these bytes), the ToC's `image.blob`
        digest when the first thing appended is the chunk data's tar header."""
        off = self.c_off
        if not hasattr(self, "data_sha_with_header"):
            h = self.sha.copy()
            h.update(data)
            self.data_sha_with_header = h.digest()
        self.f.write(data)
        self.sha.update(data)
        self.c_off += len(data)
        return off

    def finish(self) -> tuple[str, int] | None:
        """Seal the blob: its id and size; None (and no file) if it holds no chunk. The file
        stays temporary until `published`."""
        self.f.close()
        if self.count == 0:
            os.unlink(self.tmp)
            return None
        blob_id = self.sha.hexdigest()
        self.final = os.path.join(self.blob_dir, blob_id)
        return blob_id, self.c_off

    @contextlib.contextmanager
    def published(self) -> Iterator[None]:
        """Put the sealed blob in place under its id for the `with` body, which writes the
        bootstrap that names it. If the body fails, a blob this build put there goes again; one
        of the same id that was there before (the same bytes, from an earlier build) stays, as
        it may serve other images. Builds into one blob directory run this one at a time (a lock
        on the directory), so a failing build never takes away a blob another build has just
        found in place and named in its bootstrap."""
        if self.final is None:  # no chunk, no blob
            yield
            return
        fd = os.open(self.blob_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            existed = os.path.lexists(self.final)
            os.replace(self.tmp, self.final)  # a blob there has the same bytes (or is damaged)
            try:
                yield
            except BaseException:
                if not existed:
                    os.unlink(self.final)
                raise
        finally:
            os.close(fd)  # (releases the lock)

    def abort(self) -> None:
        """Remove the temporary file of a build that failed before `published`."""
        self.f.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)
