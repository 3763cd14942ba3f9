"""Pure-Python chunk lookup: the reference twin of the C module rafs._speedups (same names, same
results, same errors; `rafs.chunkmap` picks one of the two).

v5_pieces cuts a byte range of a v5 file into pieces of its 80-byte chunk records. v6_pieces does
the same for a v6 file from its 8-byte chunk indexes, resolving each index with v6_chunk: the
bootstrap's chunk table record (found through a chunk map keyed by `chunk_key`, which chunk_map
builds) gives the digest and crc, the blob's ci table (when attached) the offsets, sizes and
compression flag. ci_entry decodes one ci table entry. merge_runs groups the chunks a read must
fetch into runs that one range request each can fetch.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .errors import RafsError, UnsupportedImageError
from .layouts import CHUNK_RECORD, V6_CHUNK_INDEX
from .model import CHUNK_COMPRESSED, CHUNK_HAS_CRC32, PIECE_TYPES, ChunkInfo, ChunkPiece

_KEY_FIELDS = struct.Struct("<32xI20xQ8xI4x")  # blob_index, uncompressed_offset, index of a record
_V1 = struct.Struct("<QQ")
_V2 = struct.Struct("<QQQ")
NULL_ADDR = 0xFFFFFFFF
_CI_V2_COMPRESSED = 0x1
_CI_V2_UNSUPPORTED = 0x2 | 0x4 | 0x8  # zran, batch, encrypted
_CI_V2_KNOWN = 0x1F

# a ci table as the v6 functions take it: (data, version, count)
CiTableData = tuple[bytes, int, int]


def _short(what: str, off: int, need: int, have: int) -> RafsError:
    return RafsError(f"bootstrap is too short: need {need} bytes at {off:#x}, file has {have}",
                     structure=what, offset=off)


_new = tuple.__new__  # builds a result as the C module does: the types' own __new__ is not run


def result_types(types) -> tuple[type[ChunkInfo], type[ChunkPiece]]:
    """The (ChunkInfo, ChunkPiece) types the pieces functions build their results of (they take
    them as an argument, so that the C module holds no state); checked as the C module checks
    them: a plain tuple of two tuple types laid out as tuple (NamedTuples)."""
    if types is PIECE_TYPES:
        return types
    # type() and the type slots themselves: a tuple subclass's __len__/__iter__ or a metaclass's
    # __basicsize__ property must not make the twin see what C does not
    if type(types) is not tuple or len(types) != 2 or not all(map(_plain_tuple_type, types)):
        raise TypeError("types must be (ChunkInfo, ChunkPiece): two tuple types with no slots of "
                        "their own (NamedTuples)")
    return types


_slot = {name: type.__dict__[name].__get__
         for name in ("__basicsize__", "__itemsize__", "__dictoffset__", "__weakrefoffset__", "__flags__")}


def _plain_tuple_type(t) -> bool:
    if not (issubclass(type(t), type) and issubclass(t, tuple)):
        return False
    flags = _slot["__flags__"](t)
    return (_slot["__basicsize__"](t) == tuple.__basicsize__
            and _slot["__itemsize__"](t) == tuple.__itemsize__ and _slot["__dictoffset__"](t) == 0
            and _slot["__weakrefoffset__"](t) == 0 and bool(flags & _TPFLAGS_HAVE_GC)
            and bool(flags & _TPFLAGS_BASETYPE))  # not a struct sequence (time.struct_time)


_TPFLAGS_HAVE_GC = 1 << 14
_TPFLAGS_BASETYPE = 1 << 10


def chunk_key(blob: int, chunk_index: int, blkaddr: int) -> int | None:
    """The v6 chunk-map key of a chunk: blob << 56 | chunk_index << 32 | blkaddr; None when a part
    is wider than a chunk index holds (8, 24, 32 bits), as then no chunk index can name it."""
    if 0 <= blob <= 0xFF and 0 <= chunk_index <= 0xFF_FFFF and 0 <= blkaddr <= 0xFFFF_FFFF:
        return blob << 56 | chunk_index << 32 | blkaddr
    return None


def chunk_map(buf, off: int, size: int, block_size: int) -> dict[int, int]:
    """chunk_key(blob, chunk index, block address) -> position of its record in the v6 chunk table
    of `size` bytes at `off` (80-byte records, sorted by digest). Records no chunk index can name
    are left out; of equal keys the last record wins. The map is filled in key order, creating each
    key and position int then, so that the chunks of one read sit close together in memory."""
    have = len(buf)
    if off < 0 or size < 0 or off + size > have:
        raise _short("chunk table", off, size, have)
    if size % 80:
        raise RafsError("chunk table size is not a multiple of 80", structure="chunk table",
                        field="size", value=size, offset=off)
    if block_size <= 0:
        raise RafsError("bad block size", structure="chunk table", field="block_size",
                        value=block_size)
    rows = []
    pos = off
    for blob, d_off, c_index in _KEY_FIELDS.iter_unpack(memoryview(buf)[off:off + size]):
        blkaddr = d_off // block_size
        if blob <= 0xFF and c_index <= 0xFF_FFFF and blkaddr <= 0xFFFF_FFFF:
            rows.append((blob << 56 | c_index << 32 | blkaddr, pos))
        pos += 80
    rows.sort()
    return dict(rows)  # a key's place is its first row, its value the last


def v5_pieces(buf, records_off: int, count: int, chunk_size: int, file_size: int,
              blob_count: int, offset: int, size: int,
              types: tuple[type[ChunkInfo], type[ChunkPiece]]) -> list[ChunkPiece]:
    """Chunk pieces of [offset, offset+size) of a v5 file whose records start at records_off,
    built of `types` (model.PIECE_TYPES)."""
    info_t, piece_t = result_types(types)
    end = min(offset + size, file_size)
    if offset < 0 or offset >= end or chunk_size <= 0:
        return []
    have = len(buf)
    out = []
    for i in range(offset // chunk_size, (end - 1) // chunk_size + 1):
        base = i * chunk_size
        lo, hi = max(offset, base), min(end, base + chunk_size)
        if i >= count:  # no records past here: the rest of the range is one hole
            out.append(_new(piece_t, (None, 0, end - lo)))
            break
        off = records_off + 80 * i
        if off < 0 or off + 80 > have:
            raise _short("chunk record", off, 80, have)
        (digest, blob, flags, c_size, d_size, c_off, d_off, file_off, index,
         crc) = CHUNK_RECORD.unpack_from(buf, off)
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
        out.append(_new(piece_t, (_new(info_t, (blob, index, flags, c_off, c_size, d_off, d_size,
                                                digest, crc)), lo - base, hi - lo)))
    return out


def v6_pieces(buf, index_off: int, chunk_size: int, file_size: int, offset: int, size: int,
              block_size: int, blob_count: int, chunk_map: dict[int, int],
              ci_tables: Sequence[CiTableData | None],
              types: tuple[type[ChunkInfo], type[ChunkPiece]]) -> list[ChunkPiece]:
    """Chunk pieces of [offset, offset+size) of a v6 file whose chunk indexes start at index_off;
    a null block address or a zero device id is a hole. Chunks resolve as in `v6_chunk`."""
    info_t, piece_t = result_types(types)
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
        lo16, hi16, blkaddr = V6_CHUNK_INDEX.unpack_from(buf, off)
        blob = (hi16 & 0xFF) - 1
        if blkaddr == NULL_ADDR or blob < 0:
            out.append(_new(piece_t, (None, 0, hi - lo)))
            continue
        chunk = _v6_chunk(buf, blob, (hi16 >> 8) << 16 | lo16, blkaddr,
                          min(chunk_size, file_size - base), off, block_size, blob_count,
                          chunk_map, ci_tables, info_t)
        out.append(_new(piece_t, (chunk, lo - base, hi - lo)))
    return out


def v6_chunk(buf, blob: int, chunk_index: int, blkaddr: int, want: int, where: int,
             block_size: int, blob_count: int, chunk_map: dict[int, int],
             ci_tables: Sequence[CiTableData | None],
             types: tuple[type[ChunkInfo], type[ChunkPiece]]) -> ChunkInfo:
    """The ChunkInfo of chunk `chunk_index` of blob `blob`, `want` bytes at block `blkaddr` of the
    uncompressed blob, named by the chunk index at `where` (-1: none). chunk_map maps chunk_key()
    to the position of a chunk table record in buf; ci_tables[blob] is None or (data, version,
    count) of the blob's ci table, which then gives the offsets, sizes and flags. The result is
    of types[0] (model.PIECE_TYPES)."""
    return _v6_chunk(buf, blob, chunk_index, blkaddr, want, where, block_size, blob_count,
                     chunk_map, ci_tables, result_types(types)[0])


def _v6_chunk(buf, blob: int, chunk_index: int, blkaddr: int, want: int, where: int,
              block_size: int, blob_count: int, chunk_map: dict[int, int],
              ci_tables: Sequence[CiTableData | None], info_t: type[ChunkInfo]) -> ChunkInfo:
    """v6_chunk with its result type checked already (v6_pieces checks it once per call)."""
    if not 0 <= blob < blob_count:
        raise RafsError("chunk index names a blob not in the blob table", structure="chunk index",
                        field="device_id", value=blob + 1, offset=where)
    key = chunk_key(blob, chunk_index, blkaddr)
    pos = None if key is None else chunk_map.get(key)
    rec = None
    rflags = 0
    if pos is not None:
        have = len(buf)
        if not 0 <= pos <= have - 80:
            raise _short("chunk table", pos, 80, have)
        rec = CHUNK_RECORD.unpack_from(buf, pos)
        rflags = rec[2]
    table = ci_tables[blob] if blob < len(ci_tables) else None
    if table is not None:
        data, version, count = table
        c_off, c_size, d_off, d_size, flags = ci_entry(data, version, count, chunk_index)
        flags = ci_flags(flags, version, chunk_index) | rflags & CHUNK_HAS_CRC32
    elif rec is None:
        raise RafsError("chunk has no chunk table record and no ci table is loaded",
                        structure="chunk index", field="chunk_index", value=chunk_index,
                        offset=where)
    else:
        _digest, _blob, flags, c_size, d_size, c_off, d_off = rec[:7]
    if d_off != blkaddr * block_size or d_size != want or c_size == 0:
        raise RafsError(f"chunk {chunk_index} of blob {blob} disagrees with its index "
                        f"(offset {d_off} vs block {blkaddr}, size {d_size} vs {want})",
                        structure="chunk index", field="blkaddr", value=blkaddr, offset=where)
    if rec is None:
        raise RafsError("chunk has no digest in the chunk table", structure="chunk index",
                        field="chunk_index", value=chunk_index, offset=where)
    return _new(info_t, (blob, chunk_index, flags, c_off, c_size, d_off, d_size, rec[0], rec[9]))


def ci_entry(data, version: int, count: int, index: int) -> tuple[int, int, int, int, int]:
    """(c_off, c_size, d_off, d_size, v2 flags) of entry `index` of a ci table (v1 or v2); the v1
    "flags" are 1 when the sizes differ (compressed), else 0."""
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


def ci_flags(flags: int, version: int, index: int) -> int:
    """The chunk flags (CHUNK_COMPRESSED or 0) of the flags ci_entry gave for chunk `index`;
    raises on ci v2 chunks this reader does not serve (zran, batch, encrypted) or unknown bits."""
    if version != 2:
        return CHUNK_COMPRESSED if flags else 0
    if flags & _CI_V2_UNSUPPORTED:
        raise UnsupportedImageError("zran/batch/encrypted chunks",
                                    f"ci v2 flags {flags:#x} on chunk {index}")
    if flags & ~_CI_V2_KNOWN:
        raise RafsError("unknown ci v2 chunk flags", structure="blob meta", field="flags",
                        value=hex(flags))
    return CHUNK_COMPRESSED if flags & _CI_V2_COMPRESSED else 0


def merge_runs(chunks: Sequence[ChunkInfo], max_size: int) -> list[list[ChunkInfo]]:
    """Group chunks (any order) into runs of one blob whose compressed ranges are adjacent, each
    run spanning at most max_size bytes (a single larger chunk is a run of its own); sorted by
    (blob, compressed offset), the same chunk listed twice is fetched once."""
    runs: list[list[ChunkInfo]] = []
    run: list[ChunkInfo] = []
    start = end = -1
    blob = -1
    for c in sorted(chunks, key=lambda c: (c.blob_index, c.compressed_offset)):
        c_off = c.compressed_offset
        if run and c.blob_index == blob:
            if c_off == end and c_off + c.compressed_size - start <= max_size:
                run.append(c)
                end = c_off + c.compressed_size
                continue
            if c_off == run[-1].compressed_offset:
                continue  # the same chunk twice
        run = [c]
        runs.append(run)
        blob, start, end = c.blob_index, c_off, c_off + c.compressed_size
    return runs
