"""Reading file data of an image from blob files in a local directory, and walking its tree."""

from __future__ import annotations

import os
from collections.abc import Iterator

from . import codecs
from .errors import RafsError
from .model import ChunkInfo, Image, Inode, is_valid_blob_id


def walk(image: Image) -> Iterator[tuple[bytes, Inode]]:
    """Every path of the image (root first as b'/'), depth first, without recursion."""
    root = image.getattr(image.root_ino)
    yield b"/", root
    stack = [(b"", image.root_ino)]
    while stack:
        prefix, ino = stack.pop()
        subdirs = []
        for name, inode, _pos in image.readdir(ino):
            path = prefix + b"/" + name
            yield path, inode
            if inode.is_dir:
                subdirs.append((path, inode.ino))
        stack.extend(reversed(subdirs))


class LocalBlobs:
    """Blob files `<blob_dir>/<blob_id>` of one image; attaches v6 ci tables on open."""

    def __init__(self, image: Image, blob_dir: str) -> None:
        self.image = image
        self.files: dict[int, int] = {}
        for blob in image.blobs:
            path = self._path(blob_dir, blob.blob_id)
            try:
                self.files[blob.index] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise RafsError(f"cannot open blob {blob.blob_id}: {e.strerror}") from None
            if image.version == 6 and blob.ci_uncompressed_size and not image.has_ci_table(blob.index):
                from .blobmeta import read_ci_table

                image.attach_ci_table(blob.index, read_ci_table(
                    blob, lambda off, n, i=blob.index: self.read(i, off, n)))

    @staticmethod
    def _path(blob_dir: str, blob_id: str) -> str:
        if not is_valid_blob_id(blob_id):
            raise RafsError("blob id is not 64 lowercase hex digits", structure="blob table",
                            field="blob_id", value=blob_id[:80])
        return os.path.join(blob_dir, blob_id)

    def read(self, blob_index: int, offset: int, size: int) -> bytes:
        """Exactly `size` bytes at `offset` of blob `blob_index`."""
        data = os.pread(self.files[blob_index], size, offset)
        if len(data) != size:
            raise RafsError(f"blob {self.image.blobs[blob_index].blob_id} is too short: "
                            f"wanted {size} bytes at {offset}, got {len(data)}")
        return data

    def chunk_data(self, chunk: ChunkInfo, verify: bool = True) -> bytes:
        """Uncompressed data of one chunk, size-checked and (if verify) digest-checked."""
        blob = self.image.blobs[chunk.blob_index]
        raw = self.read(chunk.blob_index, chunk.compressed_offset, chunk.compressed_size)
        return codecs.decode_chunk(chunk, raw, blob.compressor, blob.digester if verify else None)

    def read_file(self, ino: int, offset: int = 0, size: int | None = None,
                  verify: bool = True) -> bytes:
        """Bytes [offset, offset+size) of regular file `ino` (the whole file by default)."""
        if size is None:
            size = self.image.getattr(ino).size
        out = []
        for piece in self.image.chunks(ino, offset, size):
            if piece.chunk is None:
                out.append(bytes(piece.length))
            else:
                data = self.chunk_data(piece.chunk, verify)
                out.append(data[piece.offset:piece.offset + piece.length])
        return b"".join(out)

    def close(self) -> None:
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()

    def __enter__(self) -> LocalBlobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
