"""RAFS v6 (EROFS-compatible) bootstrap reader (rafs-format.md section 4).

Inodes are addressed by nid and decoded on first use; the bootstrap chunk table is indexed on
first chunk lookup (by `chunkmap.chunk_key`); a blob's ci table, once attached, gives chunk
offsets and sizes. Chunk lookup itself is `chunkmap.v6_pieces` / `v6_chunk` (C or Python).
"""

from __future__ import annotations

import bisect
import os
import stat
from array import array
from collections.abc import Iterator
from typing import NamedTuple

from . import chunkmap, dirsearch
from .blobmeta import CiTable
from .buf import Buf
from .errors import RafsError, UnsupportedImageError
from .layouts import (
    CHUNK_RECORD,
    V6_BLOB,
    V6_COMPACT_INODE,
    V6_DIRENT,
    V6_EXTENDED_INODE,
    V6_SUPER,
    V6_SUPER_EXT,
)
from .memo import Memo
from .model import (
    BLOB_ALIGNED,
    BLOB_BATCH,
    BLOB_ENCRYPTED,
    BLOB_EXTERNAL,
    BLOB_SEPARATE,
    BLOB_TARFS,
    BLOB_ZRAN,
    CHUNK_SIZE_MAX,
    CHUNK_SIZE_MIN,
    COMPRESSORS,
    DIGESTERS,
    PIECE_TYPES,
    SB_COMPAT_MASK,
    SB_ENCRYPTION_AES_128_XTS,
    SB_TARFS_MODE,
    BlobInfo,
    ChunkInfo,
    ChunkPiece,
    Image,
    Inode,
)
from .names import XATTR_VALUE_MAX, check_name, check_xattr_name
from .v5 import MAX_FILE_SIZE, compressor_from_flags, digester_from_flags

V6_MAGIC = 0xE0F5E1E2
SUPER_OFF = 1024
EXT_SUPER_OFF = 1152
DEVT_SLOT_OFF = 1408
INCOMPAT_CHUNKED_FILE = 0x4
INCOMPAT_DEVICE_TABLE = 0x8
V6_KNOWN_FLAGS = 0x3FF | 0x0100_0000 | SB_ENCRYPTION_AES_128_XTS | SB_COMPAT_MASK
FLAT_PLAIN, FLAT_INLINE, CHUNK_BASED = 0, 2, 4
CHUNK_FORMAT_INDEXES = 0x20
MAX_SYMLINK = 4096
INODE_CACHE_MAX = 65536
DIRBLOCK_CACHE_MAX = 64  # decoded directory blocks kept (a listing resumes where it stopped)
DIR_ENDS_CACHE_MAX = 4096  # directories whose per-block entry counts are known
MAX_DIR_SIZE = 1 << 32

_XATTR_PREFIX = {1: b"user.", 2: b"system.posix_acl_access", 3: b"system.posix_acl_default",
                 4: b"trusted.", 6: b"security."}
_FILE_TYPES = {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
               stat.S_IFIFO, stat.S_IFSOCK}
_EUID, _EGID = os.geteuid(), os.getegid()


class _Ino(NamedTuple):
    nid: int
    offset: int
    layout: int
    mode: int
    nlink: int
    size: int
    i_u: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    body_off: int  # end of the inode core = start of the xattr body
    xattr_size: int


class V6Image(Image):
    """A RAFS v6 bootstrap."""

    version = 6

    def __init__(self, buf: Buf, path: str, *, blob_id_override: str | None = None) -> None:
        self.buf = buf
        self.path = path
        self._inodes: Memo[int, _Ino] = Memo(INODE_CACHE_MAX)
        self._files: Memo[int, tuple[int, int]] = Memo(INODE_CACHE_MAX)  # checked regular files: (idx_off, size)
        self._parents: dict[int, int] = {}
        self._dirblocks: Memo[tuple[int, int], list[tuple[bytes, int, int]]] = Memo(DIRBLOCK_CACHE_MAX)
        self._dir_ends: Memo[int, list[int]] = Memo(DIR_ENDS_CACHE_MAX)  # nid -> entry position after each block
        self._chunk_map: dict[int, int] | None = None
        self._chunk_keys: array | None = None  # the chunk map's keys, sorted (by blob, index)
        self._ci: dict[int, CiTable] = {}
        self._read_super()
        self._read_ext_super()
        self.blobs = self._read_blobs(blob_id_override)
        self._ci_tables: list[tuple[bytes, int, int] | None] = [None] * len(self.blobs)
        self.prefetch = self._read_prefetch()
        root = self._inode(self.root_ino)
        if not stat.S_ISDIR(root.mode):
            raise RafsError("root inode is not a directory", structure="inode", field="i_mode",
                            value=oct(root.mode), offset=root.offset)
        self._parents[self.root_ino] = self.root_ino

    # -- superblocks and tables ------------------------------------------------------------

    def _read_super(self) -> None:
        (magic, _csum, _compat, blkszbits, _extslots, root_nid, inos, _bt, _btn, _blocks,
         meta_blkaddr, xattr_blkaddr, _uuid, _vol, incompat, _u, extra_devices,
         devt_slotoff) = self.buf.unpack(V6_SUPER, SUPER_OFF, "erofs superblock")
        if magic != V6_MAGIC:
            raise RafsError("bad EROFS magic", structure="erofs superblock", field="magic",
                            value=hex(magic), offset=SUPER_OFF)
        if blkszbits == 9:
            raise UnsupportedImageError("tarfs", "512-byte block RAFS v6 (TARFS mode)")
        if blkszbits != 12:
            raise RafsError("unsupported block size", structure="erofs superblock",
                            field="blkszbits", value=blkszbits, offset=SUPER_OFF + 12)
        if incompat & ~(INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE):
            raise RafsError("unknown EROFS incompat features", structure="erofs superblock",
                            field="feature_incompat", value=hex(incompat), offset=SUPER_OFF + 80)
        self.block_size = bs = 1 << blkszbits
        if inos == 0:
            raise RafsError("no inodes", structure="erofs superblock", field="inos", value=0,
                            offset=SUPER_OFF + 16)
        if meta_blkaddr * bs >= self.buf.size:
            raise RafsError("meta_blkaddr beyond the bootstrap", structure="erofs superblock",
                            field="meta_blkaddr", value=meta_blkaddr, offset=SUPER_OFF + 40)
        if extra_devices and devt_slotoff * 128 != DEVT_SLOT_OFF:
            raise RafsError("bad device slot offset", structure="erofs superblock",
                            field="devt_slotoff", value=devt_slotoff, offset=SUPER_OFF + 88)
        self.root_ino = root_nid
        self.inode_count = inos
        self._meta_off = meta_blkaddr * bs
        self._xattr_off = xattr_blkaddr * bs
        self._extra_devices = extra_devices

    def superblock_info(self) -> dict:
        """The superblocks in the field names of nydusd's RafsSuperMeta (GET
        /api/v1/daemon/backend), without the daemon's timeouts."""
        return {"magic": V6_MAGIC, "version": 0x600, "sb_size": 0, "root_inode": self.root_ino,
                "chunk_size": self.chunk_size, "batch_size": 0, "inodes_count": self.inode_count,
                "flags": {"bits": self.flags}, "inode_table_entries": 0, "inode_table_offset": 0,
                "blob_table_size": self._blob_table[1], "blob_table_offset": self._blob_table[0],
                "extended_blob_table_offset": 0, "extended_blob_table_entries": 0,
                "blob_device_table_count": self._extra_devices,
                "blob_device_table_offset": DEVT_SLOT_OFF if self._extra_devices else 0,
                "prefetch_table_offset": self._prefetch_table[0],
                "prefetch_table_entries": self._prefetch_table[1] // 4, "is_chunk_dict": False,
                "meta_blkaddr": self._meta_off // self.block_size, "root_nid": self.root_ino,
                "chunk_table_offset": self._chunk_table[0],
                "chunk_table_size": self._chunk_table[1]}

    def _read_ext_super(self) -> None:
        (flags, bt_off, bt_size, chunk_size, ct_off, ct_size, pt_off,
         pt_size) = self.buf.unpack(V6_SUPER_EXT, EXT_SUPER_OFF, "nydus ext superblock")
        where = EXT_SUPER_OFF
        if flags & ~V6_KNOWN_FLAGS:
            raise RafsError("unknown superblock flags", structure="ext superblock",
                            field="s_flags", value=hex(flags), offset=where)
        if flags & SB_ENCRYPTION_AES_128_XTS:
            raise UnsupportedImageError("encryption", "superblock flag ENCRYPTION_AES_128_XTS")
        if flags & SB_TARFS_MODE:
            raise UnsupportedImageError("tarfs", "superblock flag TARFS_MODE")
        if bin(flags & 0xC3).count("1") != 1 or bin(flags & 0xC).count("1") != 1:
            raise RafsError("need exactly one compressor and one digester flag",
                            structure="ext superblock", field="s_flags", value=hex(flags),
                            offset=where)
        if chunk_size & (chunk_size - 1) or not CHUNK_SIZE_MIN <= chunk_size <= CHUNK_SIZE_MAX:
            raise RafsError("chunk size must be a power of two in 4 KiB..16 MiB",
                            structure="ext superblock", field="s_chunk_size", value=chunk_size,
                            offset=where + 20)
        size = self.buf.size
        for name, off, length, unit, field_off in (
                ("s_blob_table_offset", bt_off, bt_size, 256, 8),
                ("s_chunk_table_offset", ct_off, ct_size, 80, 24),
                ("s_prefetch_table_offset", pt_off, pt_size, 4, 40)):
            if length and (off + length > size or off < DEVT_SLOT_OFF or length % unit):
                raise RafsError("table outside the bootstrap or of a bad size",
                                structure="ext superblock", field=name, value=off,
                                offset=where + field_off)
        self.flags = flags
        self.chunk_size = chunk_size
        self.compressor = compressor_from_flags(flags)
        self.digester = digester_from_flags(flags)
        # an empty table's offset was not checked above: it becomes 0, so no unchecked number
        # travels on (into the C hot path, say, where it may not even fit in 64 signed bits)
        self._blob_table, self._chunk_table, self._prefetch_table = (
            (off if length else 0, length)
            for off, length in ((bt_off, bt_size), (ct_off, ct_size), (pt_off, pt_size)))

    def _read_blobs(self, override: str | None) -> list[BlobInfo]:
        off, size = self._blob_table
        blobs = []
        for i in range(size // 256):
            pos = off + 256 * i
            (raw_id, index, chunk_size, count, comp, dig, features, c_size, d_size, toc_size,
             ci_comp, ci_off, ci_c, ci_d, toc_digest, _meta_digest, _meta_size, _iv,
             cipher) = self.buf.unpack(V6_BLOB, pos, "blob table")
            blob_id = raw_id.rstrip(b"\0").decode("ascii", "replace")
            if index != i or chunk_size != self.chunk_size:
                raise RafsError("blob table entry inconsistent", structure="blob table",
                                field="blob_index/chunk_size", value=(index, chunk_size), offset=pos)
            if comp >= len(COMPRESSORS) or dig >= len(DIGESTERS) or ci_comp >= len(COMPRESSORS):
                raise RafsError("unknown algorithm id", structure="blob table",
                                field="compression/digest", value=(comp, dig, ci_comp), offset=pos + 76)
            self._check_blob_features(features, cipher, pos)
            if count > 1 << 24 or ci_c > ci_d:
                raise RafsError("bad chunk count or ci sizes", structure="blob table",
                                field="chunk_count", value=count, offset=pos + 72)
            blobs.append(BlobInfo(i, blob_id, count, chunk_size, COMPRESSORS[comp], DIGESTERS[dig],
                                  features, c_size, d_size, 0, 0, COMPRESSORS[ci_comp], ci_off,
                                  ci_c, ci_d, toc_size, toc_digest))
        if len(blobs) > 254:
            raise RafsError("too many blobs", structure="blob table", value=len(blobs), offset=off)
        if override is not None and blobs:
            blobs[-1] = blobs[-1]._replace(blob_id=override)
        return blobs

    @staticmethod
    def _check_blob_features(features: int, cipher: int, pos: int) -> None:
        for bit, name in ((BLOB_ENCRYPTED, "encryption"), (BLOB_ZRAN, "zran"), (BLOB_TARFS, "tarfs"),
                          (BLOB_BATCH, "batch"), (BLOB_SEPARATE, "separate blob meta"),
                          (BLOB_EXTERNAL, "external blobs")):
            if features & bit:
                raise UnsupportedImageError(name, f"blob feature {bit:#x} at offset {pos:#x}")
        if cipher:
            raise UnsupportedImageError("encryption", f"cipher algo {cipher} at offset {pos:#x}")
        if not features & BLOB_ALIGNED:
            raise RafsError("blob lacks the ALIGNED feature", structure="blob table",
                            field="features", value=hex(features), offset=pos + 84)

    def _read_prefetch(self) -> list[int]:
        off, size = self._prefetch_table
        out = []
        for i in range(size // 4):
            nid = self.buf.u32(off + 4 * i, "prefetch table", "nid")
            if nid == 0:
                break
            out.append(nid)
        return out

    # -- inodes ------------------------------------------------------------------------------

    def _inode(self, nid: int) -> _Ino:
        ino = self._inodes.get(nid)
        if ino is None:
            ino = self._inodes.put(nid, self._decode(nid))
        return ino

    def _decode(self, nid: int) -> _Ino:
        b = self.buf
        if nid < 0 or nid >= 1 << 48:
            raise RafsError("nid out of range", structure="inode", field="nid", value=nid)
        off = self._meta_off + nid * 32
        fmt = b.u16(off, "inode", "i_format")
        if fmt & ~0xF:
            raise RafsError("unknown inode format bits", structure="inode", field="i_format",
                            value=hex(fmt), offset=off)
        layout = fmt >> 1 & 7
        if fmt & 1:
            (_f, icount, mode, size, i_u, _ino, uid, gid, mtime, mtime_nsec,
             nlink) = b.unpack(V6_EXTENDED_INODE, off, "extended inode")
            core = 64
        else:
            _f, icount, mode, nlink, size, i_u, _ino, uid, gid = b.unpack(V6_COMPACT_INODE, off, "compact inode")
            core, mtime, mtime_nsec = 32, 0, 0
        if stat.S_IFMT(mode) not in _FILE_TYPES:
            raise RafsError("bad file type", structure="inode", field="i_mode", value=oct(mode),
                            offset=off + 4)
        if size >= MAX_FILE_SIZE:
            raise RafsError("file size implausibly large", structure="inode", field="i_size",
                            value=size, offset=off + 8)
        if layout not in (FLAT_PLAIN, FLAT_INLINE, CHUNK_BASED):
            raise RafsError("unsupported data layout", structure="inode", field="i_format",
                            value=layout, offset=off)
        xsize = 12 + 4 * (icount - 1) if icount else 0
        b.check(off, core + xsize, "inode", "xattr body")
        return _Ino(nid, off, layout, mode, nlink, size, i_u, uid, gid, mtime, mtime_nsec,
                    off + core, xsize)

    def _attr(self, ino: _Ino) -> Inode:
        uid, gid = (ino.uid, ino.gid) if self.explicit_uid_gid else (_EUID, _EGID)
        rdev = ino.i_u if stat.S_ISCHR(ino.mode) or stat.S_ISBLK(ino.mode) else 0
        if stat.S_ISDIR(ino.mode) or stat.S_ISLNK(ino.mode):
            blocks = -(-ino.size // 512)
        elif stat.S_ISREG(ino.mode):
            blocks = -(-ino.size // 512)
        else:
            blocks = 0
        return Inode(ino.nid, ino.mode, uid, gid, ino.size, ino.nlink, ino.mtime, ino.mtime_nsec,
                     rdev, blocks)

    def _flat(self, ino: _Ino) -> tuple[int, int]:
        """(offset of the first data block, offset of the inline tail or -1) of a flat
        (directory or symlink) inode."""
        if ino.layout not in (FLAT_PLAIN, FLAT_INLINE):
            raise RafsError("directory or symlink with a chunk-based layout", structure="inode",
                            field="i_format", value=ino.layout, offset=ino.offset)
        tail = ino.body_off + ino.xattr_size if ino.layout == FLAT_INLINE else -1
        return ino.i_u * self.block_size, tail

    def _block(self, ino: _Ino, k: int) -> bytes:
        """Block k of a flat (directory or symlink) inode's data, cut to the file size."""
        bs = self.block_size
        data_off, tail = self._flat(ino)
        length = min(bs, ino.size - k * bs)
        if tail >= 0 and k == -(-ino.size // bs) - 1:
            if tail // bs != (tail + length - 1) // bs:
                raise RafsError("inline tail crosses a block boundary", structure="inode",
                                field="i_size", value=ino.size, offset=ino.offset)
            return self.buf.bytes(tail, length, "inode", "inline data")
        return self.buf.bytes(data_off + k * bs, length, "inode", "data block")

    # -- directories -------------------------------------------------------------------------

    def _dir(self, nid: int) -> _Ino:
        ino = self._inode(nid)
        if not stat.S_ISDIR(ino.mode):
            raise RafsError("not a directory", structure="inode", field="i_mode",
                            value=oct(ino.mode), offset=ino.offset)
        if ino.size > MAX_DIR_SIZE:
            raise RafsError("directory too large", structure="inode", field="i_size",
                            value=ino.size, offset=ino.offset)
        return ino

    def _dirents(self, ino: _Ino, k: int) -> list[tuple[bytes, int, int]]:
        """(name, nid, file type) of every entry of directory block k."""
        blk = self._block(ino, k)
        where = f"directory {ino.nid} block {k}"
        if len(blk) < 12:
            raise RafsError("directory block too short", structure=where, value=len(blk))
        first = V6_DIRENT.unpack_from(blk, 0)[1]
        if first % 12 or first == 0 or first > len(blk):
            raise RafsError("bad first nameoff", structure=where, field="nameoff", value=first)
        n = first // 12
        ents = [V6_DIRENT.unpack_from(blk, 12 * j) for j in range(n)]
        out = []
        for j, (nid, nameoff, ftype) in enumerate(ents):
            end = ents[j + 1][1] if j + 1 < n else len(blk)
            if not first <= nameoff < end <= len(blk):
                raise RafsError("nameoff out of order or outside the block", structure=where,
                                field=f"dirent[{j}].nameoff", value=nameoff)
            name = blk[nameoff:end]
            if j + 1 == n:
                name = name.split(b"\0", 1)[0]
            out.append((name, nid, ftype))
        return out

    def _nblocks(self, ino: _Ino) -> int:
        return -(-ino.size // self.block_size)

    def _child(self, parent: _Ino, name: bytes, nid: int) -> Inode:
        """Validate one directory entry and return the child's attributes."""
        check_name(name, f"directory {parent.nid}", parent.offset)
        child = self._inode(nid)
        if stat.S_ISDIR(child.mode):
            if nid in (self.root_ino, parent.nid):
                raise RafsError("directory cycle: entry points at the root or its own directory",
                                structure=f"directory {parent.nid}", field="nid", value=nid)
            known = self._parents.get(nid)
            if known is None:
                a, depth = parent.nid, 0
                while a != self.root_ino and depth < 1 << 16:
                    if a == nid:
                        break
                    a, depth = self._parents.get(a, self.root_ino), depth + 1
                if a == nid:
                    raise RafsError("directory cycle", structure=f"directory {parent.nid}",
                                    field="nid", value=nid)
                self._parents[nid] = parent.nid
            elif known != parent.nid:
                raise RafsError("directory has two parents (cycle or hardlinked directory)",
                                structure=f"directory {parent.nid}", field="nid", value=nid)
        return self._attr(child)

    def getattr(self, ino: int) -> Inode:
        return self._attr(self._inode(ino))

    def lookup(self, parent_ino: int, name: bytes) -> Inode | None:
        parent = self._dir(parent_ino)
        if not parent.size:
            return None
        data_off, tail = self._flat(parent)
        found = dirsearch.find_dirent(self.buf.data, parent.nid, data_off, tail, parent.size,
                                      self.block_size, parent.offset, name)
        return None if found is None else self._child(parent, name, found[0])

    def _dirents_cached(self, ino: _Ino, k: int) -> list[tuple[bytes, int, int]]:
        key = (ino.nid, k)
        ents = self._dirblocks.get(key)
        if ents is None:
            ents = self._dirblocks.put(key, self._dirents(ino, k))
        return ents

    def readdir(self, ino: int, start: int = 0) -> Iterator[tuple[bytes, Inode, int]]:
        parent = self._dir(ino)
        ends = self._dir_ends.get(ino)
        if ends is None:
            ends = self._dir_ends.put(ino, [])
        # resume at the block holding entry `start` without decoding the blocks before it
        first = bisect.bisect_right(ends, start) if start > 0 else 0
        pos = ends[first - 1] if first else 0
        prev = b""
        for k in range(first, self._nblocks(parent)):
            ents = self._dirents_cached(parent, k)
            if len(ends) == k:
                ends.append(pos + len(ents))
            if pos + len(ents) <= start:
                pos += len(ents)
                continue
            for name, nid, _t in ents:
                pos += 1
                if name <= prev and prev:
                    raise RafsError("directory entries not sorted", structure=f"directory {ino}",
                                    field="name", value=name[:64])
                prev = name
                if pos <= start or name in (b".", b".."):
                    continue
                yield name, self._child(parent, name, nid), pos

    def parent(self, ino: int) -> int:
        d = self._dir(ino)
        known = self._parents.get(ino)
        if known is not None:
            return known
        # not reached through a lookup here (a daemon that took over a mount): the `..` entry,
        # in whichever block the name order put it (names such as "-x" sort before it)
        for k in range(self._nblocks(d)):
            ents = self._dirents_cached(d, k)
            for name, nid, _t in ents:
                if name == b"..":
                    self._dir(nid)
                    return nid
            if ents and ents[-1][0] > b"..":  # past where it sorts
                break
        raise RafsError("directory has no '..' entry", structure=f"directory {ino}",
                        offset=d.offset)

    # -- symlinks, xattrs ----------------------------------------------------------------------

    def readlink(self, ino: int) -> bytes:
        node = self._inode(ino)
        if not stat.S_ISLNK(node.mode):
            raise RafsError("not a symlink", structure="inode", field="i_mode",
                            value=oct(node.mode), offset=node.offset)
        if not 0 < node.size <= MAX_SYMLINK:
            raise RafsError("bad symlink size", structure="inode", field="i_size",
                            value=node.size, offset=node.offset)
        return b"".join(self._block(node, k) for k in range(self._nblocks(node)))

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        node = self._inode(ino)
        if not node.xattr_size:
            return {}
        b, pos, end = self.buf, node.body_off, node.body_off + node.xattr_size
        shared = b.bytes(pos + 4, 1, "xattr body", "shared count")[0]
        out: dict[bytes, bytes] = {}
        pos += 12
        for i in range(shared):
            sid = b.u32(pos + 4 * i, "xattr body", "shared id")
            self._xattr_entry(self._xattr_off + 4 * sid, None, out)
        pos += 4 * shared
        if pos > end:
            raise RafsError("shared xattr ids overrun the xattr body", structure="xattr body",
                            field="shared count", value=shared, offset=node.body_off + 4)
        while pos < end:
            pos = self._xattr_entry(pos, end, out)
        return out

    def _xattr_entry(self, pos: int, end: int | None, out: dict[bytes, bytes]) -> int:
        b = self.buf
        name_len = b.bytes(pos, 1, "xattr entry", "name length")[0]
        index = b.bytes(pos + 1, 1, "xattr entry", "name index")[0]
        value_size = b.u16(pos + 2, "xattr entry", "value size")
        prefix = _XATTR_PREFIX.get(index)
        if prefix is None:
            raise RafsError("unknown xattr name index", structure="xattr entry",
                            field="name index", value=index, offset=pos + 1)
        nxt = pos + ((4 + name_len + value_size + 3) & ~3)
        if end is not None and nxt > end:
            raise RafsError("xattr entry overruns the xattr body", structure="xattr entry",
                            field="value size", value=value_size, offset=pos)
        name = prefix + b.bytes(pos + 4, name_len, "xattr entry", "name")
        check_xattr_name(name, "xattr entry", pos)
        if value_size > XATTR_VALUE_MAX:
            raise RafsError("xattr value too large", structure="xattr entry", field="value size",
                            value=value_size, offset=pos + 2)
        out[name] = b.bytes(pos + 4 + name_len, value_size, "xattr entry", "value")
        return nxt

    # -- chunks --------------------------------------------------------------------------------

    def attach_ci_table(self, blob_index: int, table: CiTable) -> None:
        """Resolve chunks of blob `blob_index` through its ci table from now on."""
        if not 0 <= blob_index < len(self.blobs):
            raise RafsError("no such blob", structure="blob table", field="index", value=blob_index)
        self._ci[blob_index] = table
        self._ci_tables[blob_index] = (table.data, table.version, table.count)

    def has_ci_table(self, blob_index: int) -> bool:
        return blob_index in self._ci

    @property
    def chunk_table_size(self) -> int:
        """Bytes of the bootstrap's chunk table (0: chunks are known only from ci tables)."""
        return self._chunk_table[1]

    def chunk_by_index(self, blob_index: int, chunk_index: int) -> ChunkInfo | None:
        """Chunk `chunk_index` of a blob, from its ci table when one is attached, else from the
        bootstrap's chunk table (None past the end, or when no record names it); the storage
        layer uses it to widen small reads to neighbouring chunks."""
        table = self._ci.get(blob_index)
        if table is not None:
            if not 0 <= chunk_index < table.count:
                return None
            _c_off, _c_size, d_off, d_size, _flags = chunkmap.ci_entry(
                table.data, table.version, table.count, chunk_index)
            blkaddr = d_off // self.block_size
        else:
            prefix = chunkmap.chunk_key(blob_index, chunk_index, 0)
            if prefix is None or not 0 <= blob_index < len(self.blobs):
                return None
            m = self._chunk_map_get()
            if self._chunk_keys is None:
                self._chunk_keys = array("Q", m)  # the map is filled in key order
            keys = self._chunk_keys
            i = bisect.bisect_left(keys, prefix)
            if i == len(keys) or keys[i] >> 32 != prefix >> 32:
                return None
            blkaddr = keys[i] & 0xFFFFFFFF
            d_size = self.buf.unpack(CHUNK_RECORD, m[keys[i]], "chunk table")[4]
        if chunkmap.chunk_key(blob_index, chunk_index, blkaddr) is None:
            return None
        return chunkmap.v6_chunk(self.buf.data, blob_index, chunk_index, blkaddr, d_size, -1,
                                 self.block_size, len(self.blobs), self._chunk_map_get(),
                                 self._ci_tables, PIECE_TYPES)

    def _regular(self, ino: int) -> tuple[_Ino, int, int]:
        node = self._inode(ino)
        if not stat.S_ISREG(node.mode):
            raise RafsError("not a regular file", structure="inode", field="i_mode",
                            value=oct(node.mode), offset=node.offset)
        count = -(-node.size // self.chunk_size)
        if count and (node.layout != CHUNK_BASED or not node.i_u & CHUNK_FORMAT_INDEXES):
            raise RafsError("regular file is not chunk-based with 8-byte indexes",
                            structure="inode", field="i_u", value=hex(node.i_u), offset=node.offset)
        idx_off = (node.body_off + node.xattr_size + 7) & ~7
        self.buf.check(idx_off, 8 * count, "inode", "chunk indexes")
        return node, idx_off, count

    def _chunk_map_get(self) -> dict[int, int]:
        """chunk_key(blob, chunk index, block address) -> position of its chunk table record
        (`chunkmap.chunk_map`), built on first use."""
        if self._chunk_map is None:
            off, size = self._chunk_table
            self._chunk_map = chunkmap.chunk_map(self.buf.data, off, size, self.block_size)
        return self._chunk_map

    def file_chunks(self, ino: int) -> list[ChunkInfo]:
        return [p.chunk for p in self.chunks(ino, 0, self.getattr(ino).size) if p.chunk]

    def chunks(self, ino: int, offset: int, size: int) -> list[ChunkPiece]:
        f = self._files.get(ino)
        if f is None:
            node, idx_off, _count = self._regular(ino)
            f = self._files.put(ino, (idx_off, node.size))
        idx_off, file_size = f
        if offset < 0 or offset >= file_size or size <= 0:
            return []
        size = min(size, file_size - offset)  # keeps offset + size inside 64 bits
        return chunkmap.v6_pieces(self.buf.data, idx_off, self.chunk_size, file_size, offset, size,
                                  self.block_size, len(self.blobs), self._chunk_map_get(),
                                  self._ci_tables, PIECE_TYPES)
