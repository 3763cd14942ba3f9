"""Pure-Python search of one name in a directory: the reference twins of the C functions
rafs._speedups.find_dirent (RAFS v6) and v5_find_child (RAFS v5), with the same results and the
same errors; `rafs.dirsearch` picks one of each pair.

v6: a directory's blocks each hold sorted 12-byte entries (nid, name offset, file type) followed by
their names; the blocks are sorted too. The search bisects the blocks by their first and last
names, then the entries of one block; it decodes and checks only the entries it compares, so a
lookup in a directory of 100,000 entries touches about 30 names instead of decoding whole blocks.
v5: a directory's children are consecutive inode records, sorted by name; the search reads only
the names of the records it compares, not the whole records.
"""

from __future__ import annotations

import struct

from .errors import RafsError

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_DIRENT = struct.Struct("<QHB")  # nid, nameoff, file type (a reserved byte follows)
DIRENT_SIZE = 12
LIMIT = 1 << 56  # bound of every directory offset and size (their sums then fit in 64 bits)


def find_dirent(buf, nid: int, data_off: int, tail_off: int, size: int, block_size: int,
                inode_off: int, name: bytes) -> tuple[int, int] | None:
    """(child nid, file type) of the entry `name` of directory `nid` (inode at inode_off), or None
    ("." and ".." are never found). The directory's `size` bytes are blocks of block_size bytes
    at data_off, except that the last one is at tail_off when tail_off >= 0 (inline tail)."""
    if block_size <= 0 or size <= 0:
        return None
    if not all(-LIMIT < v < LIMIT for v in (data_off, tail_off, size, block_size)):
        raise RafsError("directory geometry out of range", structure="inode", field="i_size",
                        value=size, offset=inode_off)
    nblocks = -(-size // block_size)
    lo, hi = 0, nblocks
    while lo < hi:
        mid = (lo + hi) // 2
        blk, blen, count = _block(buf, nid, data_off, tail_off, size, block_size, inode_off,
                                  nblocks, mid)
        where = (nid, mid)
        if name < _name(buf, blk, blen, count, 0, where):
            hi = mid
        elif name > _name(buf, blk, blen, count, count - 1, where):
            lo = mid + 1
        else:
            a, b = 0, count
            while a < b:
                m = (a + b) // 2
                entry = _name(buf, blk, blen, count, m, where)
                if name < entry:
                    b = m
                elif name > entry:
                    a = m + 1
                else:
                    if name in (b".", b".."):
                        return None
                    child, _nameoff, ftype = _DIRENT.unpack_from(buf, blk + DIRENT_SIZE * m)
                    return child, ftype
            return None
    return None


def _block(buf, nid: int, data_off: int, tail_off: int, size: int, bs: int, inode_off: int,
           nblocks: int, k: int) -> tuple[int, int, int]:
    """(position, length, entry count) of directory block k of nblocks, bounds-checked."""
    length = min(bs, size - k * bs)
    if tail_off >= 0 and k == nblocks - 1:
        if tail_off // bs != (tail_off + length - 1) // bs:
            raise RafsError("inline tail crosses a block boundary", structure="inode",
                            field="i_size", value=size, offset=inode_off)
        pos, field = tail_off, "inline data"
    else:
        pos, field = data_off + k * bs, "data block"
    if pos < 0 or pos + length > len(buf):
        raise _short(length, pos, len(buf), "inode", field)
    if length < DIRENT_SIZE:
        raise RafsError("directory block too short", structure=f"directory {nid} block {k}",
                        value=length)
    first = _U16.unpack_from(buf, pos + 8)[0]
    if first % DIRENT_SIZE or first == 0 or first > length:
        raise RafsError("bad first nameoff", structure=f"directory {nid} block {k}",
                        field="nameoff", value=first)
    return pos, length, first // DIRENT_SIZE


def _name(buf, blk: int, blen: int, count: int, j: int, where: tuple[int, int]) -> bytes:
    """The name of entry j of the block at blk (the last one ends at its first NUL); `where` is
    (directory nid, block number), for the error."""
    off = _U16.unpack_from(buf, blk + DIRENT_SIZE * j + 8)[0]
    end = _U16.unpack_from(buf, blk + DIRENT_SIZE * j + 20)[0] if j + 1 < count else blen
    if not count * DIRENT_SIZE <= off < end <= blen:
        raise RafsError("nameoff out of order or outside the block",
                        structure=f"directory {where[0]} block {where[1]}",
                        field=f"dirent[{j}].nameoff", value=off)
    name = bytes(buf[blk + off:blk + end])
    return name.split(b"\0", 1)[0] if j + 1 == count else name


V5_SB_SIZE = 8192  # v5 inode records start after the superblock
V5_INODE_HDR = 128  # the fixed part of a v5 inode record; the name follows it


def v5_find_child(buf, itable_off: int, itable_entries: int, child_index: int, child_count: int,
                  name: bytes) -> int:
    """The position (0-based) of `name` among the child_count children of a v5 directory, whose
    records are inode-table entries child_index, child_index + 1, ...; -1 if absent."""
    if not (0 <= itable_off < LIMIT and 0 <= itable_entries < 1 << 32 and 0 <= child_index < 1 << 32
            and 0 <= child_count < 1 << 32):
        raise RafsError("directory geometry out of range", structure="inode",
                        field="i_child_index", value=child_index)
    lo, hi = 0, child_count
    while lo < hi:
        mid = (lo + hi) // 2
        entry = _v5_name(buf, itable_off, itable_entries, child_index + mid)
        if entry == name:
            return mid
        if entry < name:
            lo = mid + 1
        else:
            hi = mid
    return -1


def _short(length: int, pos: int, have: int, structure: str, field: str = "") -> RafsError:
    return RafsError(f"bootstrap is too short: need {length} bytes at {pos:#x}, file has {have}",
                     structure=structure, field=field, offset=pos)


def _v5_name(buf, itable_off: int, entries: int, index: int) -> bytes:
    """The name in inode record `index` (1-based) of a v5 inode table, bounds-checked."""
    if not 1 <= index <= entries:
        raise RafsError("inode index out of range", structure="inode table", field="index",
                        value=index)
    ent_off = itable_off + 4 * (index - 1)
    if ent_off < 0 or ent_off + 4 > len(buf):
        raise _short(4, ent_off, len(buf), "inode table", "entry")
    ent = _U32.unpack_from(buf, ent_off)[0]
    if ent <= V5_SB_SIZE // 8 or ent >= 1 << 29:
        raise RafsError("inode table entry out of range", structure="inode table",
                        field=f"entry[{index - 1}]", value=ent, offset=ent_off)
    off = ent * 8
    if off + V5_INODE_HDR > len(buf):
        raise _short(V5_INODE_HDR, off, len(buf), "inode")
    size = _U16.unpack_from(buf, off + 100)[0]
    pos = off + V5_INODE_HDR
    if pos + size > len(buf):
        raise _short(size, pos, len(buf), "inode", "name")
    return bytes(buf[pos:pos + size])
