"""RAFS v5 bootstrap writer (rafs-format.md section 3)."""

from __future__ import annotations

import os
import stat
import struct
import tempfile

from .. import codecs
from ..errors import RafsError
from ..layouts import CHUNK_RECORD, V5_EXT_BLOB, V5_INODE, V5_SUPER
from ..model import (
    SB_COMPRESSION_LZ4,
    SB_COMPRESSION_NONE,
    SB_COMPRESSION_ZSTD,
    SB_EXPLICIT_UID_GID,
    SB_HAS_XATTR,
    SB_HASH_BLAKE3,
    SB_HASH_SHA256,
    ChunkInfo,
)
from ..v5 import I_HARDLINK, I_SYMLINK, I_XATTR  # the reader's flags
from .blob import BlobWriter
from .tree import Node, bfs, find

SB_SIZE = 8192
COMPRESSOR_FLAGS = {"none": SB_COMPRESSION_NONE, "lz4_block": SB_COMPRESSION_LZ4,
                    "zstd": SB_COMPRESSION_ZSTD}
DIGESTER_FLAGS = {"blake3": SB_HASH_BLAKE3, "sha256": SB_HASH_SHA256}


def _pad8(b: bytes) -> bytes:
    return b + bytes(-len(b) % 8)


def _xattr_table(xattrs: dict[bytes, bytes]) -> bytes:
    pairs = b"".join(struct.pack("<I", len(k) + 1 + len(v)) + k + b"\0" + v
                     for k, v in xattrs.items())
    return _pad8(struct.pack("<Q", len(pairs)) + pairs)


class V5Writer:
    """Builds one v5 image: call `build(root_node)`, get (bootstrap bytes, blob id or None)."""

    def __init__(self, blob_dir: str, compressor: str = "lz4_block", digester: str = "blake3",
                 chunk_size: int = 1 << 20, repeatable: bool = False) -> None:
        self.blob = BlobWriter(blob_dir, compressor, digester, chunk_size)
        self.compressor, self.digester = compressor, digester
        self.chunk_size = chunk_size
        self.repeatable = repeatable

    def build(self, root: Node, prefetch: list[str] | None = None) -> tuple[bytes, str | None]:
        """Write and seal the blob (`self.blob.published()` puts it in place while the bootstrap is
        written); return (bootstrap bytes, blob id or None). `prefetch`: paths."""
        try:
            order = list(bfs(root))
            index = {id(n): i + 1 for i, (n, _p) in enumerate(order)}
            inos, nlinks = self._hardlinks(order, index)
            chunks = [self._chunks(n) for n, _p in order]
            result = self.blob.finish()
            digests = self._digests(order, index, chunks)
            records = [self._record(n, p, index, inos, nlinks, chunks[i], digests[i])
                       for i, (n, p) in enumerate(order)]
            table = [inos[id(find(root, p))] for p in prefetch or []]
            return self._assemble(records, result, len(set(inos.values())), table), \
                (result[0] if result else None)
        except BaseException:
            self.blob.abort()
            raise

    def _hardlinks(self, order, index) -> tuple[dict[int, int], dict[int, int]]:
        first: dict[tuple[int, int], int] = {}
        count: dict[tuple[int, int], int] = {}
        inos = {}
        for n, _p in order:
            key = n.link_key
            if key is not None:
                first.setdefault(key, index[id(n)])
                count[key] = count.get(key, 0) + 1
                inos[id(n)] = first[key]
            else:
                inos[id(n)] = index[id(n)]
        nlinks = {id(n): count[n.link_key] for n, _p in order if n.link_key is not None}
        return inos, nlinks

    def _chunks(self, n: Node) -> list[ChunkInfo]:
        if not stat.S_ISREG(n.st.st_mode) or n.st.st_size == 0:
            return []
        return self.blob.add_file(n.path, n.st.st_size)

    def _digests(self, order, index, chunks) -> list[bytes]:
        h = self.digester
        out: list[bytes] = [b""] * len(order)
        for i in range(len(order) - 1, -1, -1):  # children always have higher indexes
            n = order[i][0]
            if n.is_dir:
                out[i] = codecs.digest(h, b"".join(out[index[id(c)] - 1] for c in n.children))
            elif stat.S_ISLNK(n.st.st_mode):
                out[i] = codecs.digest(h, n.symlink)
            elif stat.S_ISREG(n.st.st_mode):
                out[i] = codecs.digest(h, b"".join(c.digest for c in chunks[i]))
            else:
                out[i] = codecs.digest(h, b"")
        return out

    def _record(self, n: Node, parent: Node | None, index, inos, nlinks, chunks, digest) -> bytes:
        st = n.st
        name = n.name
        flags = (I_SYMLINK if stat.S_ISLNK(st.st_mode) else 0) | (I_XATTR if n.xattrs else 0)
        if n.is_dir:
            size = max(4096, -(-sum(len(c.name) + 8 for c in n.children) // 4096) * 4096)
            nlink = 2 + sum(1 for c in n.children if c.is_dir)
            child_index = index[id(n.children[0])] if n.children else 0
            child_count = len(n.children)
        else:
            size = len(n.symlink) if stat.S_ISLNK(st.st_mode) else (
                st.st_size if stat.S_ISREG(st.st_mode) else 0)
            nlink = nlinks.get(id(n), 1)
            child_index, child_count = 0, len(chunks)
            if nlink > 1:  # as upstream's builder marks them (its check and unpack tools read it)
                flags |= I_HARDLINK
        xattr = _xattr_table(n.xattrs) if n.xattrs else b""
        blocks = -(-(size + len(xattr)) // 512)
        uid, gid = (0, 0) if self.repeatable else (st.st_uid, st.st_gid)
        mtime, nsec = (0, 0) if parent is None else divmod(st.st_mtime_ns, 10**9)
        rdev = st.st_rdev & 0xFFFFFFFF if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        parent_ino = inos[id(parent)] if parent is not None else 0
        head = V5_INODE.pack(digest, parent_ino, inos[id(n)], uid, gid, 0, st.st_mode, size, blocks,
                             flags, nlink, child_index, child_count, len(name), len(n.symlink), rdev,
                             nsec, mtime)
        body = _pad8(name) + (_pad8(n.symlink) if n.symlink else b"") + xattr
        file_off = 0
        recs = []
        for c in chunks:
            recs.append(CHUNK_RECORD.pack(c.digest, 0, c.flags, c.compressed_size, c.uncompressed_size,
                                          c.compressed_offset, c.uncompressed_offset, file_off,
                                          c.chunk_index, 0))
            file_off += c.uncompressed_size
        return head + body + b"".join(recs)

    def _assemble(self, records: list[bytes], blob, inodes_count: int, prefetch: list[int]) -> bytes:
        itable_off = SB_SIZE
        itable = _pad8(b"".join(struct.pack("<I", 0) for _ in records))
        prefetch_off = itable_off + len(itable)
        ptable = _pad8(b"".join(struct.pack("<I", i) for i in prefetch))
        blob_off = prefetch_off + len(ptable)
        btable = _pad8(struct.pack("<II", 0, 0) + blob[0].encode()) if blob else b""
        ext_off = blob_off + len(btable)
        ext = V5_EXT_BLOB.pack(self.blob.count, 0, self.blob.d_off, blob[1]) if blob else b""
        pos = ext_off + len(ext)
        offsets = []
        for r in records:
            offsets.append(pos // 8)
            pos += len(r)
        itable = _pad8(b"".join(struct.pack("<I", o) for o in offsets))
        flags = COMPRESSOR_FLAGS[self.compressor] | DIGESTER_FLAGS[self.digester]
        flags |= 0 if self.repeatable else SB_EXPLICIT_UID_GID
        if any(r for r in records if struct.unpack_from("<Q", r, 80)[0] & I_XATTR):
            flags |= SB_HAS_XATTR
        sb = V5_SUPER.pack(0x52414653, 0x500, SB_SIZE, self.chunk_size, flags, inodes_count,
                           itable_off, prefetch_off, blob_off, len(records), len(prefetch),
                           len(btable), 1 if blob else 0, ext_off if blob else 0)
        return sb + bytes(SB_SIZE - len(sb)) + itable + ptable + btable + ext + b"".join(records)


def write_bootstrap(data: bytes, out: str) -> None:
    """Write `data` to `out` through a temporary file and an atomic rename."""
    d = os.path.dirname(os.path.abspath(out))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bootstrap-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_compressor(name: str) -> None:
    if name not in COMPRESSOR_FLAGS:
        raise RafsError(f"compressor {name!r} is not supported (none, lz4_block, zstd)")
