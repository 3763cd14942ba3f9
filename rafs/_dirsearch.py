"""Pure-Python search of one name in a RAFS v6 (EROFS) directory: the reference twin of the C
function rafs._speedups.find_dirent (same results, same errors; `rafs.dirsearch` picks one).

A directory's blocks each hold sorted 12-byte entries (nid, name offset, file type) followed by
their names; the blocks are sorted too. The search bisects the blocks by their first and last
names, then the entries of one block; it decodes and checks only the entries it compares, so a
lookup in a directory of 100,000 entries touches about 30 names instead of decoding whole blocks.
"""

from __future__ import annotations

import struct

from .errors import RafsError

_U16 = struct.Struct("<H")
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
    lo, hi = 0, -(-size // block_size)
    while lo < hi:
        mid = (lo + hi) // 2
        blk, blen, count = _block(buf, nid, data_off, tail_off, size, block_size, inode_off, mid)
        where = f"directory {nid} block {mid}"
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
           k: int) -> tuple[int, int, int]:
    """(position, length, entry count) of directory block k, bounds-checked."""
    length = min(bs, size - k * bs)
    if tail_off >= 0 and k == -(-size // bs) - 1:
        if tail_off // bs != (tail_off + length - 1) // bs:
            raise RafsError("inline tail crosses a block boundary", structure="inode",
                            field="i_size", value=size, offset=inode_off)
        pos, field = tail_off, "inline data"
    else:
        pos, field = data_off + k * bs, "data block"
    if pos < 0 or pos + length > len(buf):
        raise RafsError(f"bootstrap is too short: need {length} bytes at {pos:#x}, file has "
                        f"{len(buf)}", structure="inode", field=field, offset=pos)
    where = f"directory {nid} block {k}"
    if length < DIRENT_SIZE:
        raise RafsError("directory block too short", structure=where, value=length)
    first = _U16.unpack_from(buf, pos + 8)[0]
    if first % DIRENT_SIZE or first == 0 or first > length:
        raise RafsError("bad first nameoff", structure=where, field="nameoff", value=first)
    return pos, length, first // DIRENT_SIZE


def _name(buf, blk: int, blen: int, count: int, j: int, where: str) -> bytes:
    """The name of entry j of the block at blk (the last one ends at its first NUL)."""
    off = _U16.unpack_from(buf, blk + DIRENT_SIZE * j + 8)[0]
    end = _U16.unpack_from(buf, blk + DIRENT_SIZE * j + 20)[0] if j + 1 < count else blen
    if not count * DIRENT_SIZE <= off < end <= blen:
        raise RafsError("nameoff out of order or outside the block", structure=where,
                        field=f"dirent[{j}].nameoff", value=off)
    name = bytes(buf[blk + off:blk + end])
    return name.split(b"\0", 1)[0] if j + 1 == count else name
