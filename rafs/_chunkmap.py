"""Pure-Python chunk lookup: the twin of the C module rafs._speedups (same names, same results,
same errors). `rafs.chunkmap` picks one of the two."""

from __future__ import annotations

import struct

from .errors import RafsError
from .model import ChunkInfo, ChunkPiece

_REC = struct.Struct("<32sIIIIQQQII")
_IDX = struct.Struct("<HHI")
_V1 = struct.Struct("<QQ")
_V2 = struct.Struct("<QQQ")
NULL_ADDR = 0xFFFFFFFF


def _short(what: str, off: int, need: int, have: int) -> RafsError:
    return RafsError(f"bootstrap is too short: need {need} bytes at {off:#x}, file has {have}",
                     structure=what, offset=off)


def v5_pieces(buf, records_off: int, count: int, chunk_size: int, file_size: int,
              blob_count: int, offset: int, size: int) -> list[ChunkPiece]:
    """Chunk pieces of [offset, offset+size) of a v5 file whose records start at records_off."""
    end = min(offset + size, file_size)
    if offset < 0 or offset >= end or chunk_size <= 0:
        return []
    have = len(buf)
    out = []
    for i in range(offset // chunk_size, (end - 1) // chunk_size + 1):
        base = i * chunk_size
        lo, hi = max(offset, base), min(end, base + chunk_size)
        if i >= count:  # no records past here: the rest of the range is one hole
            out.append(ChunkPiece(None, 0, end - lo))
            break
        off = records_off + 80 * i
        if off < 0 or off + 80 > have:
            raise _short("chunk record", off, 80, have)
        (digest, blob, flags, c_size, d_size, c_off, d_off, file_off, index,
         crc) = _REC.unpack_from(buf, off)
        if blob >= blob_count:
            raise RafsError("chunk refers to a blob not in the blob table",
                            structure="chunk record", field="blob_index", value=blob, offset=off + 32)
        if d_size == 0 or d_size > chunk_size or c_size == 0:
            raise RafsError("bad chunk size", structure="chunk record", field="uncompressed_size",
                            value=d_size, offset=off + 44)
        want = min(chunk_size, file_size - base)
        if file_off != base or d_size != want:
            raise RafsError(f"chunk {i} does not cover bytes {base}..{base + want}",
                            structure="chunk record", field="file_offset", value=file_off,
                            offset=off + 64)
        out.append(ChunkPiece(ChunkInfo(blob, index, flags, c_off, c_size, d_off, d_size, digest,
                                        crc), lo - base, hi - lo))
    return out


def v6_indexes(buf, index_off: int, chunk_size: int, file_size: int, offset: int,
               size: int) -> list[tuple[int, int, int, int, int, int, int]]:
    """(blob_index, chunk_index, blkaddr, chunk_len, piece_offset, piece_len, index_offset) per
    chunk of [offset, offset+size) of a v6 chunk-based file; blob_index -1 marks a hole."""
    end = min(offset + size, file_size)
    if offset < 0 or offset >= end or chunk_size <= 0:
        return []
    have = len(buf)
    out = []
    for i in range(offset // chunk_size, (end - 1) // chunk_size + 1):
        base = i * chunk_size
        lo, hi = max(offset, base), min(end, base + chunk_size)
        off = index_off + 8 * i
        if off < 0 or off + 8 > have:
            raise _short("chunk index", off, 8, have)
        lo16, hi16, blkaddr = _IDX.unpack_from(buf, off)
        want = min(chunk_size, file_size - base)
        if blkaddr == NULL_ADDR:
            out.append((-1, 0, 0, want, 0, hi - lo, off))
            continue
        out.append(((hi16 & 0xFF) - 1, (hi16 >> 8) << 16 | lo16, blkaddr, want, lo - base,
                    hi - lo, off))
    return out


def ci_entry(data, version: int, count: int, index: int) -> tuple[int, int, int, int, int]:
    """(c_off, c_size, d_off, d_size, v2 flags) of entry `index` of a ci table (v1 or v2)."""
    if not 0 <= index < count:
        raise RafsError("chunk index beyond the ci table", structure="blob meta",
                        field="chunk_index", value=index)
    width = 24 if version == 2 else 16
    if (index + 1) * width > len(data):
        raise RafsError("ci table shorter than its entry count", structure="blob meta",
                        field="chunk_index", value=index)
    if version != 2:
        d, c = _V1.unpack_from(data, index * 16)
        d_size = ((d >> 44) | ((d & 0xF00) << 12)) + 1
        c_size = ((c >> 44) | ((c & 0xF00_0000_0000) >> 20)) + 1
        return c & 0xFF_FFFF_FFFF, c_size, d & 0x0000_0FFF_FFFF_F000, d_size, \
            1 if c_size != d_size else 0
    d, c, _x = _V2.unpack_from(data, index * 24)
    return c & 0xFF_FFFF_FFFF, c >> 40, (d & 0xFFFF_FFFF) << 12, ((d >> 32) & 0xFF_FFFF) + 1, d >> 56
