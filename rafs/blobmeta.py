"""Blob compression-context ("ci") tables of RAFS v6 blobs (rafs-format.md section 5)."""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import chunkmap, codecs
from ._chunkmap import ci_flags
from .errors import RafsError
from .layouts import BLOB_META_HEADER
from .model import BLOB_CHUNK_INFO_V2, COMPRESSORS, BlobInfo

META_MAGIC = 0xB10BB10B
META_HEADER_SIZE = 4096
V2_COMPRESSED, V2_ZRAN, V2_BATCH, V2_ENCRYPTED, V2_HAS_CRC32 = 0x1, 0x2, 0x4, 0x8, 0x10


class CiEntry(tuple):
    """(compressed_offset, compressed_size, uncompressed_offset, uncompressed_size, flags)."""

    __slots__ = ()


class CiTable:
    """A blob's chunk-info array, decoded one entry at a time on demand."""

    def __init__(self, data: bytes, count: int, version: int, blob_index: int) -> None:
        size = 24 if version == 2 else 16
        if len(data) < count * size:
            raise RafsError("ci table shorter than its entry count", structure="blob meta",
                            field="ci_uncompressed_size", value=len(data))
        self.data = data
        self.count = count
        self.version = version
        self.blob_index = blob_index

    def entry(self, index: int) -> tuple[int, int, int, int, int]:
        """(c_off, c_size, d_off, d_size, chunk flags) of chunk `index`."""
        c_off, c_size, d_off, d_size, flags = chunkmap.ci_entry(self.data, self.version,
                                                                self.count, index)
        return c_off, c_size, d_off, d_size, ci_flags(flags, self.version, index)


def parse_header(raw: bytes, blob: BlobInfo) -> None:
    """Validate a 4096-byte blob-meta header against the blob table entry."""
    if len(raw) != META_HEADER_SIZE:
        raise RafsError("blob meta header truncated", structure="blob meta header",
                        value=len(raw))
    (magic, _features, compressor, entries, ci_off, c_size, d_size, _zoff, _zsize,
     _zcount) = BLOB_META_HEADER.unpack_from(raw, 0)
    (magic2,) = struct.unpack_from("<I", raw, 4092)
    if magic != META_MAGIC or magic2 != META_MAGIC:
        raise RafsError("bad blob meta magic", structure="blob meta header", field="magic",
                        value=hex(magic))
    want = (COMPRESSORS.index(blob.ci_compressor), blob.chunk_count, blob.ci_offset,
            blob.ci_compressed_size, blob.ci_uncompressed_size)
    got = (compressor, entries, ci_off, c_size, d_size)
    if got != want:
        raise RafsError(f"blob meta header {got} disagrees with blob table {want}",
                        structure="blob meta header", field="ci fields")


def read_ci_table(blob: BlobInfo, read: Callable[[int, int], bytes]) -> CiTable:
    """Load the ci table of `blob`; read(offset, size) returns bytes of the blob file."""
    if not blob.ci_uncompressed_size:
        raise RafsError("blob has no ci table", structure="blob table", field="ci_uncompressed_size",
                        value=0)
    header = read(blob.ci_offset + blob.ci_compressed_size, META_HEADER_SIZE)
    parse_header(bytes(header), blob)
    raw = bytes(read(blob.ci_offset, blob.ci_compressed_size))
    if len(raw) != blob.ci_compressed_size:
        raise RafsError("short read of ci table", structure="blob meta", value=len(raw))
    if blob.ci_compressor == "none" or blob.ci_compressed_size == blob.ci_uncompressed_size:
        if blob.ci_compressed_size != blob.ci_uncompressed_size:
            raise RafsError("uncompressed ci table with differing sizes", structure="blob table",
                            field="ci_compressed_size", value=blob.ci_compressed_size)
        data = raw
    else:
        data = codecs.decompress(blob.ci_compressor, raw, blob.ci_uncompressed_size)
    version = 2 if blob.features & BLOB_CHUNK_INFO_V2 else 1
    return CiTable(data, blob.chunk_count, version, blob.index)
