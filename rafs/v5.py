"""RAFS v5 bootstrap reader (rafs-format.md section 3).

Lazy: the constructor validates the superblock and the tables; inode records are decoded on first
use and kept in a bounded cache. Every count and offset is checked before use.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from typing import NamedTuple

from . import chunkmap, dirsearch
from .buf import Buf
from .errors import RafsError, UnsupportedImageError
from .layouts import CHUNK_RECORD, V5_EXT_BLOB, V5_INODE, V5_SUPER
from .memo import Memo
from .model import (
    CHUNK_SIZE_MAX,
    CHUNK_SIZE_MIN,
    PIECE_TYPES,
    SB_COMPAT_MASK,
    SB_COMPRESSION_GZIP,
    SB_COMPRESSION_LZ4,
    SB_COMPRESSION_NONE,
    SB_COMPRESSION_ZSTD,
    SB_ENCRYPTION_AES_128_XTS,
    SB_HASH_BLAKE3,
    SB_HASH_SHA256,
    BlobInfo,
    ChunkInfo,
    ChunkPiece,
    Image,
    Inode,
)
from .names import check_name, parse_xattr_pairs_v5

V5_MAGIC = 0x52414653
V5_VERSION = 0x500
SB_SIZE = 8192
V5_KNOWN_FLAGS = 0x3FF | 0x0100_0000 | SB_ENCRYPTION_AES_128_XTS | SB_COMPAT_MASK

I_SYMLINK = 0x1
I_HARDLINK = 0x2
I_XATTR = 0x4
I_HAS_HOLE = 0x8
V5_INODE_FLAGS = I_SYMLINK | I_HARDLINK | I_XATTR | I_HAS_HOLE

INODE_HDR = 128
CHUNK_REC = 80
MAX_SYMLINK = 4096
MAX_FILE_SIZE = 1 << 62  # keeps every offset computation inside 64-bit signed range
INODE_CACHE_MAX = 65536


def _align8(n: int) -> int:
    return (n + 7) & ~7


def compressor_from_flags(flags: int) -> str:
    """The chunk compressor named by superblock flags (nydusd's order; none set -> lz4_block)."""
    for bit, name in ((SB_COMPRESSION_NONE, "none"), (SB_COMPRESSION_LZ4, "lz4_block"),
                      (SB_COMPRESSION_GZIP, "gzip"), (SB_COMPRESSION_ZSTD, "zstd")):
        if flags & bit:
            return name
    return "lz4_block"


def digester_from_flags(flags: int) -> str:
    """The digest algorithm named by superblock flags (none set -> blake3)."""
    if flags & SB_HASH_BLAKE3:
        return "blake3"
    if flags & SB_HASH_SHA256:
        return "sha256"
    return "blake3"


class _Rec(NamedTuple):
    """One decoded v5 inode record."""

    index: int
    offset: int
    ino: int
    parent: int
    uid: int
    gid: int
    mode: int
    size: int
    blocks: int
    flags: int
    nlink: int
    child_index: int
    child_count: int
    name: bytes
    rdev: int
    mtime_nsec: int
    mtime: int
    symlink_off: int
    symlink_size: int
    xattr_off: int  # offset of the pairs (after the u64 size), 0 if none
    xattr_size: int
    chunks_off: int


class V5Image(Image):
    """A RAFS v5 bootstrap."""

    version = 5

    def __init__(self, buf: Buf, path: str) -> None:
        self.buf = buf
        self.path = path
        self._recs: Memo[int, _Rec] = Memo(INODE_CACHE_MAX)
        # regular files without holes: the leading arguments of their chunkmap.v5_pieces calls
        self._files: Memo[int, tuple] = Memo(INODE_CACHE_MAX)
        self._read_super()
        self.blobs = self._read_blobs()
        self.prefetch = self._read_prefetch()
        self.root_ino = 1
        self._legacy_check()
        root = self._record(1)
        if not stat.S_ISDIR(root.mode):
            raise RafsError("root inode is not a directory", structure="inode", field="i_mode",
                            value=oct(root.mode), offset=root.offset)

    # -- superblock and tables -------------------------------------------------------------

    def _read_super(self) -> None:
        b = self.buf
        (magic, version, sb_size, chunk_size, flags, inodes_count, itable_off, prefetch_off,
         blob_off, itable_entries, prefetch_entries, blob_size, ext_entries,
         ext_off) = b.unpack(V5_SUPER, 0, "v5 superblock")
        if magic != V5_MAGIC:
            raise RafsError("bad v5 magic", structure="superblock", field="s_magic", value=hex(magic), offset=0)
        if version != V5_VERSION:
            raise RafsError("unsupported v5 version", structure="superblock", field="s_fs_version",
                            value=hex(version), offset=4)
        if sb_size != SB_SIZE:
            raise RafsError("bad superblock size", structure="superblock", field="s_sb_size",
                            value=sb_size, offset=8)
        if chunk_size & (chunk_size - 1) or not CHUNK_SIZE_MIN <= chunk_size <= CHUNK_SIZE_MAX:
            raise RafsError("chunk size must be a power of two in 4 KiB..16 MiB",
                            structure="superblock", field="s_block_size", value=chunk_size, offset=12)
        if flags & ~V5_KNOWN_FLAGS:
            raise RafsError("unknown superblock flags", structure="superblock", field="s_flags",
                            value=hex(flags), offset=16)
        if flags & SB_ENCRYPTION_AES_128_XTS:
            raise UnsupportedImageError("encryption", "superblock flag ENCRYPTION_AES_128_XTS")
        if itable_entries == 0:
            raise RafsError("empty inode table", structure="superblock", field="s_inode_table_entries",
                            value=0, offset=56)
        if inodes_count > itable_entries:
            raise RafsError("more inodes than inode table entries", structure="superblock",
                            field="s_inodes_count", value=inodes_count, offset=24)
        self._check_table(itable_off, 4 * itable_entries, "s_inode_table_offset", 32)
        self._check_table(prefetch_off, 4 * prefetch_entries, "s_prefetch_table_offset", 40)
        self._check_table(blob_off, blob_size, "s_blob_table_offset", 48)
        self._check_table(ext_off, 64 * ext_entries, "s_extended_blob_table_offset", 72)
        self.flags = flags
        self.chunk_size = chunk_size
        self.compressor = compressor_from_flags(flags)
        self.digester = digester_from_flags(flags)
        self.inode_count = inodes_count
        self._itable_off = itable_off
        self._itable_entries = itable_entries
        self._prefetch = (prefetch_off, prefetch_entries)
        self._blob_table = (blob_off, blob_size)
        self._ext_table = (ext_off, ext_entries)

    def superblock_info(self) -> dict:
        """The superblock in the field names of nydusd's RafsSuperMeta (GET
        /api/v1/daemon/backend), without the daemon's timeouts."""
        return {"magic": V5_MAGIC, "version": V5_VERSION, "sb_size": SB_SIZE,
                "root_inode": self.root_ino, "chunk_size": self.chunk_size, "batch_size": 0,
                "inodes_count": self.inode_count, "flags": {"bits": self.flags},
                "inode_table_entries": self._itable_entries,
                "inode_table_offset": self._itable_off,
                "blob_table_size": self._blob_table[1], "blob_table_offset": self._blob_table[0],
                "extended_blob_table_offset": self._ext_table[0],
                "extended_blob_table_entries": self._ext_table[1],
                "blob_device_table_count": 0, "blob_device_table_offset": 0,
                "prefetch_table_offset": self._prefetch[0],
                "prefetch_table_entries": self._prefetch[1], "is_chunk_dict": False,
                "meta_blkaddr": 0, "root_nid": 0, "chunk_table_offset": 0, "chunk_table_size": 0}

    def _check_table(self, off: int, length: int, field: str, sb_off: int) -> None:
        if length == 0:
            return
        if off % 8 or off < SB_SIZE or off + length > self.buf.size:
            raise RafsError("table outside the bootstrap or misaligned", structure="superblock",
                            field=field, value=off, offset=sb_off)

    def _read_blobs(self) -> list[BlobInfo]:
        off, size = self._blob_table
        raw = self.buf.bytes(off, size, "blob table")
        ids: list[tuple[int, int, str]] = []
        pos = 0
        while size - pos > 8:
            ra_off, ra_size = struct.unpack_from("<II", raw, pos)
            end = raw.find(b"\0", pos + 8)
            if end < 0:
                end = size
            blob_id = raw[pos + 8:end]
            if not blob_id or any(c < 0x21 or c > 0x7E for c in blob_id):
                raise RafsError("blob id empty or not printable ASCII", structure="blob table",
                                field="blob_id", value=blob_id[:80], offset=off + pos + 8)
            ids.append((ra_off, ra_size, blob_id.decode()))
            pos = end + 1
        ext_off, ext_entries = self._ext_table
        if ext_entries and ext_entries != len(ids):
            raise RafsError("extended blob table does not match the blob table",
                            structure="superblock", field="s_extended_blob_table_entries",
                            value=ext_entries, offset=68)
        blobs = []
        for i, (ra_off, ra_size, blob_id) in enumerate(ids):
            count = features = d_size = c_size = 0
            if ext_entries:
                count, features, d_size, c_size = self.buf.unpack(
                    V5_EXT_BLOB, ext_off + 64 * i, "extended blob table")
            blobs.append(BlobInfo(i, blob_id, count, self.chunk_size, self.compressor,
                                  self.digester, features, c_size, d_size, ra_off, ra_size))
        return blobs

    def _read_prefetch(self) -> list[int]:
        off, entries = self._prefetch
        out = []
        for i in range(entries):
            ino = self.buf.u32(off + 4 * i, "prefetch table", "entry")
            if ino == 0:
                break
            if ino > self._itable_entries:
                raise RafsError("prefetch entry is not an inode", structure="prefetch table",
                                field="entry", value=ino, offset=off + 4 * i)
            out.append(ino)
        return out

    # -- inode records ---------------------------------------------------------------------

    def _record(self, index: int) -> _Rec:
        rec = self._recs.get(index)
        if rec is None:
            if not 1 <= index <= self._itable_entries:
                raise RafsError("inode index out of range", structure="inode table",
                                field="index", value=index)
            rec = self._recs.put(index, self._decode(index))
        return rec

    def _decode(self, index: int) -> _Rec:
        b = self.buf
        ent_off = self._itable_off + 4 * (index - 1)
        ent = b.u32(ent_off, "inode table", "entry")
        if ent <= SB_SIZE // 8 or ent >= 1 << 29:
            raise RafsError("inode table entry out of range", structure="inode table",
                            field=f"entry[{index - 1}]", value=ent, offset=ent_off)
        off = ent * 8
        (_digest, parent, ino, uid, gid, _projid, mode, size, blocks, flags, nlink, child_index,
         child_count, name_size, symlink_size, rdev, mtime_nsec, mtime) = b.unpack(V5_INODE, off, "inode")
        if flags & ~V5_INODE_FLAGS:
            raise RafsError("unknown inode flags", structure="inode", field="i_flags",
                            value=hex(flags), offset=off + 80)
        if ino == 0 or ino > self._itable_entries:
            raise RafsError("inode number out of range", structure="inode", field="i_ino",
                            value=ino, offset=off + 40)
        if stat.S_IFMT(mode) not in _FILE_TYPES:
            raise RafsError("bad file type", structure="inode", field="i_mode", value=oct(mode),
                            offset=off + 60)
        if size >= MAX_FILE_SIZE:
            raise RafsError("file size implausibly large", structure="inode", field="i_size",
                            value=size, offset=off + 64)
        pos = off + INODE_HDR
        name = b.bytes(pos, name_size, "inode", "name")
        if index == 1:
            if name != b"/":
                raise RafsError("root inode name is not '/'", structure="inode", field="name",
                                value=name[:64], offset=pos)
        else:
            check_name(name, "inode", pos)
        pos += _align8(name_size)
        symlink_off = pos
        if stat.S_ISLNK(mode):
            if symlink_size == 0 or symlink_size > MAX_SYMLINK:
                raise RafsError("bad symlink size", structure="inode", field="i_symlink_size",
                                value=symlink_size, offset=off + 102)
            b.check(pos, symlink_size, "inode", "symlink")
            pos += _align8(symlink_size)
        elif symlink_size:
            raise RafsError("symlink size on a non-symlink", structure="inode",
                            field="i_symlink_size", value=symlink_size, offset=off + 102)
        xattr_off = xattr_size = 0
        if flags & I_XATTR:
            xattr_size = b.u64(pos, "inode", "xattr size")
            b.check(pos + 8, xattr_size, "inode", "xattr table")
            xattr_off = pos + 8
            pos += 8 + _align8(xattr_size)
        chunks_off = pos
        if stat.S_ISREG(mode):
            self._check_chunk_count(size, child_count, flags, off)
            b.check(pos, CHUNK_REC * child_count, "inode", "chunk records")
        return _Rec(index, off, ino, parent, uid, gid, mode, size, blocks, flags, nlink,
                    child_index, child_count, name, rdev, mtime_nsec, mtime, symlink_off,
                    symlink_size, xattr_off, xattr_size, chunks_off)

    def _check_chunk_count(self, size: int, count: int, flags: int, off: int) -> None:
        expected = -(-size // self.chunk_size)
        if count > expected:
            raise RafsError(f"file of {size} bytes cannot have {count} chunks", structure="inode",
                            field="i_child_count", value=count, offset=off + 96)

    def _legacy_check(self) -> None:
        """Reject the pre-release inode layout (rafs-format.md 3.13), detected on the root record."""
        off = self.buf.u32(self._itable_off, "inode table", "entry[0]") * 8
        mode = self.buf.u32(off + 60, "inode", "i_mode")
        legacy_mode = self.buf.u32(off + 52, "inode", "legacy mode")
        legacy_name_size = self.buf.u16(off + 96, "inode", "legacy name size")
        if not stat.S_ISDIR(mode) and stat.S_ISDIR(legacy_mode) and legacy_name_size:
            raise UnsupportedImageError(
                "legacy pre-release v5 inode layout",
                "this bootstrap predates the public RAFS v5 format (rafs-format.md 3.13)")

    def _inode(self, rec: _Rec) -> Inode:
        uid, gid = (rec.uid, rec.gid) if self.explicit_uid_gid else (_EUID, _EGID)
        return Inode(rec.ino, rec.mode, uid, gid, rec.size, rec.nlink, rec.mtime,
                     rec.mtime_nsec, rec.rdev, rec.blocks)

    def _dir_record(self, ino: int) -> _Rec:
        rec = self._inode_record(ino)
        if not stat.S_ISDIR(rec.mode):
            raise RafsError("not a directory", structure="inode", field="i_mode",
                            value=oct(rec.mode), offset=rec.offset)
        if rec.child_count and (rec.child_index <= rec.index
                                or rec.child_index + rec.child_count - 1 > self._itable_entries):
            raise RafsError("directory children outside the inode table or not after the directory",
                            structure="inode", field="i_child_index", value=rec.child_index,
                            offset=rec.offset + 92)
        return rec

    def _inode_record(self, ino: int) -> _Rec:
        rec = self._record(ino)
        if rec.ino != ino:
            raise RafsError("inode record does not carry its own inode number", structure="inode",
                            field="i_ino", value=rec.ino, offset=rec.offset + 40)
        return rec

    def _child(self, parent: _Rec, k: int) -> _Rec:
        rec = self._record(parent.child_index + k)
        if rec.parent != parent.ino:
            raise RafsError("child's parent is not its directory", structure="inode",
                            field="i_parent", value=rec.parent, offset=rec.offset + 32)
        if stat.S_ISDIR(rec.mode) and rec.ino != rec.index:
            raise RafsError("directory inode number differs from its index", structure="inode",
                            field="i_ino", value=rec.ino, offset=rec.offset + 40)
        return rec

    # -- Image interface -------------------------------------------------------------------

    def getattr(self, ino: int) -> Inode:
        return self._inode(self._inode_record(ino))

    def lookup(self, parent_ino: int, name: bytes) -> Inode | None:
        parent = self._dir_record(parent_ino)
        k = dirsearch.v5_find_child(self.buf.data, self._itable_off, self._itable_entries,
                                    parent.child_index, parent.child_count, name)
        if k < 0:
            return None
        rec = self._child(parent, k)  # the whole record, checked
        return self._inode(rec) if rec.name == name else None

    def readdir(self, ino: int, start: int = 0) -> Iterator[tuple[bytes, Inode, int]]:
        parent = self._dir_record(ino)
        prev = None
        for k in range(max(start, 0), parent.child_count):
            rec = self._child(parent, k)
            if prev is not None and rec.name <= prev:
                raise RafsError("directory entries not in strictly increasing name order",
                                structure="inode", field="name", value=rec.name[:64],
                                offset=rec.offset + INODE_HDR)
            prev = rec.name
            yield rec.name, self._inode(rec), k + 1

    def parent(self, ino: int) -> int:
        rec = self._dir_record(ino)
        if ino == self.root_ino or not rec.parent:
            return self.root_ino
        self._dir_record(rec.parent)
        return rec.parent

    def readlink(self, ino: int) -> bytes:
        rec = self._inode_record(ino)
        if not stat.S_ISLNK(rec.mode):
            raise RafsError("not a symlink", structure="inode", field="i_mode",
                            value=oct(rec.mode), offset=rec.offset)
        return self.buf.bytes(rec.symlink_off, rec.symlink_size, "inode", "symlink")

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        rec = self._inode_record(ino)
        if not rec.xattr_off:
            return {}
        raw = self.buf.bytes(rec.xattr_off, rec.xattr_size, "inode", "xattr table")
        return parse_xattr_pairs_v5(raw, rec.xattr_off)

    def _chunk(self, rec: _Rec, i: int) -> tuple[ChunkInfo, int]:
        off = rec.chunks_off + CHUNK_REC * i
        (digest, blob_index, flags, c_size, d_size, c_off, d_off, file_off, index,
         crc) = self.buf.unpack(CHUNK_RECORD, off, "chunk record")
        if blob_index >= len(self.blobs):
            raise RafsError("chunk refers to a blob not in the blob table", structure="chunk record",
                            field="blob_index", value=blob_index, offset=off + 32)
        if d_size == 0 or d_size > self.chunk_size or c_size == 0:
            raise RafsError("bad chunk size", structure="chunk record", field="uncompressed_size",
                            value=d_size, offset=off + 44)
        return ChunkInfo(blob_index, index, flags, c_off, c_size, d_off, d_size, digest, crc), file_off

    def build_chunk_index(self) -> None:
        """Index every chunk by (blob, chunk index) so that `chunk_by_index` can find a chunk's
        neighbours in its blob (v5 has no blob-wide table). Walks every inode record once: run it
        in the background; until it finishes `chunk_by_index` answers None."""
        index: dict[tuple[int, int], tuple[int, int]] = {}
        for i in range(1, self._itable_entries + 1):
            rec = self._decode(i)  # bypasses the inode cache on purpose
            if stat.S_ISREG(rec.mode):
                for k in range(rec.child_count):
                    off = rec.chunks_off + CHUNK_REC * k
                    blob = self.buf.u32(off + 32, "chunk record", "blob_index")
                    idx = self.buf.u32(off + 72, "chunk record", "index")
                    index.setdefault((blob, idx), (i, k))
        self._chunk_index = index

    def chunk_by_index(self, blob_index: int, chunk_index: int) -> ChunkInfo | None:
        """Chunk `chunk_index` of blob `blob_index`, once `build_chunk_index` has run (else None)."""
        where = getattr(self, "_chunk_index", {}).get((blob_index, chunk_index))
        if where is None:
            return None
        return self._chunk(self._record(where[0]), where[1])[0]

    def file_chunks(self, ino: int) -> list[ChunkInfo]:
        rec = self._regular(ino)
        return [self._chunk(rec, i)[0] for i in range(rec.child_count)]

    def _regular(self, ino: int) -> _Rec:
        rec = self._inode_record(ino)
        if not stat.S_ISREG(rec.mode):
            raise RafsError("not a regular file", structure="inode", field="i_mode",
                            value=oct(rec.mode), offset=rec.offset)
        return rec

    def chunks(self, ino: int, offset: int, size: int) -> list[ChunkPiece]:
        # the hot path: a file seen before costs one memo lookup and one call (which clamps)
        args = self._files.get(ino)
        if args is None:
            rec = self._regular(ino)
            if rec.flags & I_HAS_HOLE:
                end = min(offset + size, rec.size)
                return self._pieces_by_scan(rec, offset, end) if 0 <= offset < end else []
            args = self._files.put(ino, (self.buf.data, rec.chunks_off, rec.child_count,
                                         self.chunk_size, rec.size, len(self.blobs)))
        return chunkmap.v5_pieces(*args, offset, size, PIECE_TYPES)

    def _pieces_by_scan(self, rec: _Rec, offset: int, end: int) -> list[ChunkPiece]:
        pieces = []
        pos = offset
        prev_end = 0
        for i in range(rec.child_count):
            chunk, file_off = self._chunk(rec, i)
            c_end = file_off + chunk.uncompressed_size
            if file_off < prev_end or c_end > rec.size:
                raise RafsError("chunk records overlap or run past the file end",
                                structure="chunk record", field="file_offset", value=file_off,
                                offset=rec.chunks_off + CHUNK_REC * i + 64)
            prev_end = c_end
            if c_end <= pos:
                continue
            if file_off >= end:
                break
            if file_off > pos:
                pieces.append(ChunkPiece(None, 0, file_off - pos))
                pos = file_off
            hi = min(end, c_end)
            pieces.append(ChunkPiece(chunk, pos - file_off, hi - pos))
            pos = hi
        if pos < end:
            pieces.append(ChunkPiece(None, 0, end - pos))
        return pieces


_FILE_TYPES = {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
               stat.S_IFIFO, stat.S_IFSOCK}
_EUID = os.geteuid()
_EGID = os.getegid()
