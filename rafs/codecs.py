"""Chunk compression and digests: lz4_block, zstd, gzip, none; blake3 and sha256.

Codec libraries are imported on first use so that importing `rafs` stays cheap.
"""

from __future__ import annotations

import hashlib
import threading

from .errors import ChunkDataError, UnsupportedImageError
from .model import ChunkInfo

ZSTD_LEVEL = 3
_local = threading.local()  # one zstd decompression context per thread, reused (3x cheaper)


def decompress(compressor: str, data: bytes, size: int) -> bytes:
    """Decompress one chunk to exactly `size` bytes, or raise ChunkDataError."""
    try:
        if compressor == "none":
            out = bytes(data)
        elif compressor == "lz4_block":
            import lz4.block

            out = lz4.block.decompress(data, uncompressed_size=size)
        elif compressor == "zstd":
            dctx = getattr(_local, "zstd", None)
            if dctx is None:
                import zstandard

                dctx = _local.zstd = zstandard.ZstdDecompressor()
            out = dctx.decompress(data, max_output_size=size)
        elif compressor == "gzip":
            import zlib

            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(data, size + 1)
            if not d.eof:
                raise ChunkDataError("gzip chunk is truncated")
        else:
            raise UnsupportedImageError(f"compressor {compressor!r}")
    except (ChunkDataError, UnsupportedImageError):
        raise
    except Exception as e:  # lz4/zstd/zlib raise their own error types
        raise ChunkDataError(f"{compressor} decompression failed: {e}") from None
    if len(out) != size:
        raise ChunkDataError(f"{compressor} chunk decompressed to {len(out)} bytes, expected {size}")
    return out


def compress(compressor: str, data: bytes) -> bytes:
    """Compress one chunk with `compressor` (no size prefix for lz4_block)."""
    if compressor == "none":
        return bytes(data)
    if compressor == "lz4_block":
        import lz4.block

        return lz4.block.compress(data, store_size=False)
    if compressor == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(data)
    if compressor == "gzip":
        import gzip

        return gzip.compress(data, mtime=0)
    raise UnsupportedImageError(f"compressor {compressor!r}")


def digest(digester: str, data: bytes) -> bytes:
    """32-byte digest of `data` with blake3 or sha256."""
    if digester == "blake3":
        import blake3

        return blake3.blake3(data).digest()
    if digester == "sha256":
        return hashlib.sha256(data).digest()
    raise UnsupportedImageError(f"digester {digester!r}")


def decode_chunk(chunk: ChunkInfo, raw: bytes, compressor: str, digester: str | None) -> bytes:
    """Turn a chunk's stored bytes into its uncompressed data, checking size (and digest if asked).

    `digester` None skips the digest check; the size is always checked.
    """
    if len(raw) != chunk.compressed_size:
        raise ChunkDataError(
            f"chunk {chunk.chunk_index} of blob {chunk.blob_index}: got {len(raw)} stored bytes, "
            f"expected {chunk.compressed_size}")
    if chunk.compressed:
        data = decompress(compressor, raw, chunk.uncompressed_size)
    else:
        if len(raw) != chunk.uncompressed_size:
            raise ChunkDataError(
                f"chunk {chunk.chunk_index}: raw chunk is {len(raw)} bytes, "
                f"expected {chunk.uncompressed_size}")
        data = bytes(raw)
    if digester is not None and digest(digester, data) != chunk.digest:
        raise ChunkDataError(
            f"chunk {chunk.chunk_index} of blob {chunk.blob_index}: {digester} digest mismatch")
    return data
