"""RAFS v6 (EROFS-compatible) bootstrap writer (rafs-format.md section 4).

Every inode is written in the extended (64-byte) form, which keeps mtimes and 32-bit ids; single
block directories and symlinks are inlined after their inode, larger ones are FLAT_PLAIN blocks
after the inode area. Regular files are chunk-based with 8-byte chunk indexes into one blob whose
uncompressed chunk offsets are 4 KiB aligned; the blob carries its ci table (v1 entries) and the
4096-byte blob-meta header.
"""

from __future__ import annotations

import hashlib
import stat
import struct
import tarfile

from ..errors import RafsError
from ..layouts import (
    BLOB_META_HEADER,
    CHUNK_RECORD,
    TOC_ENTRY,
    V6_BLOB,
    V6_CHUNK_INDEX,
    V6_DEVICE_SLOT,
    V6_DIRENT,
    V6_EXTENDED_INODE,
    V6_SUPER,
    V6_SUPER_EXT,
)
from ..model import (
    COMPRESSORS,
    DIGESTERS,
    SB_EXPLICIT_UID_GID,
    SB_HAS_XATTR,
    SB_INLINED_CHUNK_DIGEST,
    ChunkInfo,
)
from .blob import BlobWriter
from .tree import Node, bfs, find
from .v5 import COMPRESSOR_FLAGS, DIGESTER_FLAGS

BS = 4096
# blob features of a blob written here: ALIGNED, INLINED_CHUNK_DIGEST, HAS_TAR_HEADER, HAS_TOC,
# CAP_TAR_TOC (what nydus-image 2.2+ writes: 0x70000021)
FEATURES = 0x7000_0021
FLAT_PLAIN, FLAT_INLINE, CHUNK_BASED = 0, 2, 4
_XPREFIX = ((b"user.", 1), (b"trusted.", 4), (b"security.", 6))
_FTYPE = {stat.S_IFREG: 1, stat.S_IFDIR: 2, stat.S_IFCHR: 3, stat.S_IFBLK: 4, stat.S_IFIFO: 5,
          stat.S_IFSOCK: 6, stat.S_IFLNK: 7}


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def xattr_body(xattrs: dict[bytes, bytes]) -> bytes:
    """Inline xattr body (12-byte header, then entries padded to 4), or b"" without xattrs."""
    if not xattrs:
        return b""
    out = bytearray(12)
    for name, value in xattrs.items():
        if name == b"system.posix_acl_access":
            index, suffix = 2, b""
        elif name == b"system.posix_acl_default":
            index, suffix = 3, b""
        else:
            index, suffix = next(((i, name[len(p):]) for p, i in _XPREFIX if name.startswith(p)),
                                 (0, b""))
            if not index:
                raise RafsError(f"xattr {name!r} cannot be stored in RAFS v6")
        entry = struct.pack("<BBH", len(suffix), index, len(value)) + suffix + value
        out += entry + bytes(-len(entry) % 4)
    return bytes(out)


def dir_blocks(entries: list[tuple[bytes, int, int]]) -> tuple[list[bytes], int]:
    """Pack (name, nid, ftype) entries (sorted) into directory blocks; returns (blocks, i_size)."""
    blocks, cur = [], []

    def flush():
        n = len(cur)
        names = b"".join(e[0] for e in cur)
        head, off = b"", 12 * n
        for name, nid, ftype in cur:
            head += V6_DIRENT.pack(nid, off, ftype)
            off += len(name)
        blocks.append(head + names)

    used = 0
    for e in entries:
        need = 12 + len(e[0])
        if cur and used + need > BS:
            flush()
            cur, used = [], 0
        cur.append(e)
        used += need
    flush()
    size = (len(blocks) - 1) * BS + len(blocks[-1])
    return [b + bytes(BS - len(b)) for b in blocks[:-1]] + [blocks[-1]], size


class _Ino:
    __slots__ = ("node", "nid", "off", "xattr", "layout", "data", "size", "nlink", "chunks",
                 "i_u", "plain_blk")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.xattr = xattr_body(node.xattrs)
        self.chunks: list[ChunkInfo] = []
        self.data = b""
        self.plain_blk = 0


class V6Writer:
    """Builds one v6 image: `build(root)` -> (bootstrap bytes, blob id or None)."""

    def __init__(self, blob_dir: str, compressor: str = "zstd", digester: str = "blake3",
                 chunk_size: int = 1 << 20, repeatable: bool = False) -> None:
        self.blob = BlobWriter(blob_dir, compressor, digester, chunk_size, align=BS)
        self.compressor, self.digester = compressor, digester
        self.chunk_size, self.repeatable = chunk_size, repeatable

    def build(self, root: Node, prefetch: list[str] | None = None) -> tuple[bytes, str | None]:
        """Write and seal the blob (`self.blob.published()` puts it in place while the bootstrap is
        written); return (bootstrap bytes, blob id or None). `prefetch`: paths."""
        self.prefetch_nodes = [find(root, p) for p in prefetch or []]
        try:
            inodes, paths = self._collect(root)
            blob = self._finish_blob()
            self._place(inodes, root)
            return self._assemble(inodes, paths, blob), (blob[0] if blob else None)
        except BaseException:
            self.blob.abort()
            raise

    def _collect(self, root: Node) -> tuple[list[_Ino], list[tuple[Node, Node | None]]]:
        """One _Ino per unique inode (hard links share one: Node.link_key), with file data
        chunked into the blob."""
        by_key: dict[tuple[int, int], _Ino] = {}
        self.of: dict[int, _Ino] = {}
        inodes, paths = [], list(bfs(root))
        for n, _p in paths:
            key = n.link_key
            ino = by_key.get(key) if key is not None else None
            if ino is None:
                ino = _Ino(n)
                ino.nlink = 0
                inodes.append(ino)
                if key is not None:
                    by_key[key] = ino
                if stat.S_ISREG(n.st.st_mode):
                    ino.chunks = self.blob.add_file(n.path, n.st.st_size) if n.st.st_size else []
            ino.nlink += 1
            self.of[id(n)] = ino
        return inodes, paths

    def _finish_blob(self):
        """Append what follows the chunk data (rafs-format.md 6.2): tar-headed image.blob, ci table
        and its header, the chunk digest array, and the ToC that finds them from the end."""
        if self.blob.count == 0:
            return self.blob.finish()
        b = self.blob
        chunks = sorted(b.chunks.values(), key=lambda c: c.chunk_index)
        data_size = b.c_off
        blob_hdr = _tar_header("image.blob", data_size)
        b.append_raw(blob_hdr)
        entries = b"".join(self._ci_entry(c) for c in chunks)
        ci_off = b.append_raw(entries)
        self.ci = (ci_off, len(entries))
        meta_header = (BLOB_META_HEADER.pack(0xB10BB10B, FEATURES, 0, b.count, ci_off,
                                             len(entries), len(entries), 0, 0, 0)
                       + bytes(4096 - BLOB_META_HEADER.size - 4) + struct.pack("<I", 0xB10BB10B))
        header_off = b.append_raw(meta_header)
        b.append_raw(_tar_header("blob.meta", len(entries) + 4096))
        digests = b"".join(c.digest for c in chunks)
        digest_off = b.append_raw(digests)
        b.append_raw(_tar_header("blob.digest", len(digests)))
        toc = b"".join(TOC_ENTRY.pack(1, name, digest, off, size, size)
                       for name, digest, off, size in (
            (b"image.blob", b.data_sha_with_header, 0, data_size),
            (b"blob.meta", hashlib.sha256(entries).digest(), ci_off, len(entries)),
            (b"blob.meta.header", hashlib.sha256(meta_header).digest(), header_off, 4096),
            (b"blob.digest", hashlib.sha256(digests).digest(), digest_off, len(digests))))
        toc_hdr = _tar_header("rafs.blob.toc", len(toc))
        b.append_raw(toc + toc_hdr)
        self.toc = (len(toc) + 512, hashlib.sha256(toc + toc_hdr).digest())
        return b.finish()

    @staticmethod
    def _ci_entry(c: ChunkInfo) -> bytes:
        d, s = c.uncompressed_size - 1, c.compressed_size - 1
        uncomp = (c.uncompressed_offset & 0x0000_0FFF_FFFF_F000) | ((d >> 20) & 0xF) << 8 | \
            (d & 0xFFFFF) << 44
        comp = c.compressed_offset | ((s >> 20) & 0xF) << 40 | (s & 0xFFFFF) << 44
        return struct.pack("<QQ", uncomp, comp)

    def _place(self, inodes: list[_Ino], root: Node) -> None:
        """Assign inode offsets (nids), inline or plain data, in BFS order."""
        # block 0: superblocks + device slots; block 1..: blob table, then the prefetch table
        self.inode_start = _align(BS + 256 + 4 * len(self.prefetch_nodes), BS)
        self.meta_blkaddr = self.inode_start // BS - 1
        off = self.inode_start
        for ino in inodes:
            n = ino.node
            mode = n.st.st_mode
            if n.is_dir:
                ino.size = self._dir_size(n)
            elif stat.S_ISLNK(mode):
                ino.size = len(n.symlink)
            elif stat.S_ISREG(mode):
                ino.size = n.st.st_size
            else:
                ino.size = 0
            core = 64 + len(ino.xattr)
            if stat.S_ISREG(mode):
                ino.layout = CHUNK_BASED
                foot = _align(core, 8) + 8 * len(ino.chunks)
            elif (n.is_dir or stat.S_ISLNK(mode)) and 0 < ino.size and core + ino.size <= BS:
                ino.layout = FLAT_INLINE
                foot = core + ino.size
                if off % BS + foot > BS:
                    off = _align(off, BS)
            else:
                ino.layout = FLAT_PLAIN
                foot = core
            ino.off = off
            ino.nid = (off - self.meta_blkaddr * BS) // 32
            off = _align(off + foot, 32)
        self.inode_end = _align(off, BS)
        blk = self.inode_end // BS
        for ino in inodes:
            if ino.layout == FLAT_PLAIN and ino.size:
                ino.plain_blk = blk
                blk += -(-ino.size // BS)
        self.data_end = blk * BS

    def _dir_entries(self, n: Node, parent_nid: int, own_nid: int) -> list[tuple[bytes, int, int]]:
        ents = [(b".", own_nid, 2), (b"..", parent_nid, 2)]
        ents += [(c.name, self.of[id(c)].nid if hasattr(self.of[id(c)], "nid") else 0,
                  _FTYPE[stat.S_IFMT(c.st.st_mode)]) for c in n.children]
        return sorted(ents)

    def _dir_size(self, n: Node) -> int:
        return dir_blocks(self._dir_entries(n, 0, 0))[1]

    def _data(self, ino: _Ino, parents: dict[int, int]) -> bytes:
        n = ino.node
        if n.is_dir:
            blocks, size = dir_blocks(self._dir_entries(n, parents[id(n)], ino.nid))
            assert size == ino.size
            return b"".join(blocks)
        if stat.S_ISLNK(n.st.st_mode):
            return n.symlink
        return b""

    def _inode_bytes(self, ino: _Ino, seq: int, root: bool) -> bytes:
        n, st = ino.node, ino.node.st
        mode = st.st_mode
        if stat.S_ISREG(mode):
            i_u = 0x20 | (self.chunk_size.bit_length() - 1 - 12)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            i_u = st.st_rdev & 0xFFFFFFFF
        elif ino.layout == FLAT_PLAIN:
            i_u = ino.plain_blk
        else:
            i_u = 0
        nlink = 2 + sum(1 for c in n.children if c.is_dir) if n.is_dir else ino.nlink
        uid, gid = (0, 0) if self.repeatable else (st.st_uid, st.st_gid)
        mtime, nsec = (0, 0) if root else divmod(st.st_mtime_ns, 10**9)
        icount = (len(ino.xattr) - 12) // 4 + 1 if ino.xattr else 0
        return V6_EXTENDED_INODE.pack(1 | ino.layout << 1, icount, mode, ino.size, i_u, seq, uid,
                                      gid, mtime, nsec, nlink) + ino.xattr

    def _assemble(self, inodes: list[_Ino], paths, blob) -> bytes:
        parents = {id(n): self.of[id(p if p is not None else n)].nid for n, p in paths}
        out = bytearray(self.data_end)
        for seq, ino in enumerate(inodes):
            head = self._inode_bytes(ino, seq + 1, seq == 0)
            out[ino.off:ino.off + len(head)] = head
            data = self._data(ino, parents)
            if ino.layout == FLAT_INLINE:
                pos = ino.off + len(head)
                out[pos:pos + len(data)] = data
            elif ino.layout == FLAT_PLAIN and data:
                pos = ino.plain_blk * BS
                out[pos:pos + len(data)] = data
            elif ino.layout == CHUNK_BASED:
                pos = _align(ino.off + len(head), 8)
                idx = b"".join(V6_CHUNK_INDEX.pack(c.chunk_index & 0xFFFF,
                                                   1 | (c.chunk_index >> 16) << 8,
                                                   c.uncompressed_offset // BS) for c in ino.chunks)
                out[pos:pos + len(idx)] = idx
        chunk_table = b""
        if blob:
            recs = sorted(self.blob.chunks.values(), key=lambda c: c.digest)
            chunk_table = b"".join(CHUNK_RECORD.pack(c.digest, 0, c.flags, c.compressed_size,
                                                     c.uncompressed_size, c.compressed_offset,
                                                     c.uncompressed_offset, 0, c.chunk_index, 0)
                                   for c in recs)
        ct_off = len(out)
        out += chunk_table
        out += bytes(-len(out) % BS)
        self._head(out, inodes, paths, blob, ct_off, len(chunk_table))
        return bytes(out)

    def _head(self, out: bytearray, inodes, paths, blob, ct_off: int, ct_size: int) -> None:
        nblobs = 1 if blob else 0
        d_size = _align(self.blob.d_off, BS)
        blocks = d_size // BS if blob else 0
        mapped = _align(len(out), 512 * 1024) // BS
        out[1024:1024 + V6_SUPER.size] = V6_SUPER.pack(
            0xE0F5E1E2, 0, 0x4000_0000, 12, 0, inodes[0].nid, len(inodes), 0, 0, blocks,
            self.meta_blkaddr, 0, bytes(16), bytes(16), 0xC, 0, nblobs, 11)
        flags = COMPRESSOR_FLAGS[self.compressor] | DIGESTER_FLAGS[self.digester]
        flags |= 0 if self.repeatable else SB_EXPLICIT_UID_GID
        if any(i.xattr for i in inodes):
            flags |= SB_HAS_XATTR
        if blob:
            flags |= SB_INLINED_CHUNK_DIGEST
        pt = b"".join(struct.pack("<I", self.of[id(n)].nid) for n in self.prefetch_nodes)
        pt_off = BS + 256 if pt else 0
        out[pt_off:pt_off + len(pt)] = pt
        out[1152:1152 + V6_SUPER_EXT.size] = V6_SUPER_EXT.pack(
            flags, BS, 256 * nblobs, self.chunk_size, ct_off, ct_size, pt_off, len(pt))
        if blob:
            blob_id = blob[0].encode()
            out[1408:1408 + V6_DEVICE_SLOT.size] = V6_DEVICE_SLOT.pack(blob_id, blocks, mapped)
            ci_off, ci_size = self.ci
            out[BS:BS + V6_BLOB.size] = V6_BLOB.pack(
                blob_id, 0, self.chunk_size, self.blob.count, COMPRESSORS.index(self.compressor),
                DIGESTERS.index(self.digester), FEATURES, blob[1], d_size, self.toc[0], 0, ci_off,
                ci_size, ci_size, self.toc[1], bytes(32), 0, bytes(8), 0)


def _tar_header(name: str, size: int) -> bytes:
    """A 512-byte GNU tar header (placed after the data it describes, as nydus-image does)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    return info.tobuf(format=tarfile.GNU_FORMAT)
