"""The objects the format layer hands out: inodes, blobs, chunks, and the Image interface.

v5 and v6 readers both implement `Image`; everything above `rafs/` sees only this module.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from typing import NamedTuple

CHUNK_SIZE_1M = 0x100000
CHUNK_SIZE_MIN = 0x1000
CHUNK_SIZE_MAX = 0x1000000

# Superblock flags (rafs-format.md 2.1)
SB_COMPRESSION_NONE = 0x1
SB_COMPRESSION_LZ4 = 0x2
SB_HASH_BLAKE3 = 0x4
SB_HASH_SHA256 = 0x8
SB_EXPLICIT_UID_GID = 0x10
SB_HAS_XATTR = 0x20
SB_COMPRESSION_GZIP = 0x40
SB_COMPRESSION_ZSTD = 0x80
SB_INLINED_CHUNK_DIGEST = 0x100
SB_TARFS_MODE = 0x200
SB_ENCRYPTION_NONE = 0x0100_0000
SB_ENCRYPTION_AES_128_XTS = 0x0200_0000
SB_COMPAT_MASK = 0xFC00_0000

# Chunk flags (rafs-format.md 2.5)
CHUNK_COMPRESSED = 0x01
CHUNK_HOLE = 0x02
CHUNK_ENCRYPTED = 0x04
CHUNK_BATCH = 0x08
CHUNK_HAS_CRC32 = 0x10

# Blob features (rafs-format.md 6.6)
BLOB_ALIGNED = 0x1
BLOB_INLINED_FS_META = 0x2
BLOB_CHUNK_INFO_V2 = 0x4
BLOB_ZRAN = 0x8
BLOB_SEPARATE = 0x10
BLOB_INLINED_CHUNK_DIGEST = 0x20
BLOB_TARFS = 0x40
BLOB_BATCH = 0x80
BLOB_ENCRYPTED = 0x100
BLOB_IS_CHUNKDICT_GENERATED = 0x200
BLOB_IS_SEPARATED_WITH_PREFETCH_FILES = 0x400
BLOB_EXTERNAL = 0x800
BLOB_HAS_TAR_HEADER = 0x1000_0000
BLOB_HAS_TOC = 0x2000_0000
BLOB_CAP_TAR_TOC = 0x4000_0000

COMPRESSORS = ("none", "lz4_block", "gzip", "zstd")  # v6 numeric ids 0..3
DIGESTERS = ("blake3", "sha256")  # v6 numeric ids 0..1

_BLOB_ID_RE = re.compile(r"[0-9a-f]{64}")


def is_valid_blob_id(blob_id: str) -> bool:
    """True when blob_id is exactly 64 lowercase hex digits (safe for paths and URLs)."""
    return isinstance(blob_id, str) and _BLOB_ID_RE.fullmatch(blob_id) is not None


class Inode(NamedTuple):
    """Attributes of one inode, as the daemon reports them (uid/gid rule already applied)."""

    ino: int
    mode: int  # st_mode including the file type bits
    uid: int
    gid: int
    size: int
    nlink: int
    mtime: int  # seconds; 0 means "not stored"
    mtime_nsec: int
    rdev: int
    blocks: int  # 512-byte units

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


class ChunkInfo(NamedTuple):
    """One chunk of one blob: where its compressed bytes are and what they decompress to."""

    blob_index: int
    chunk_index: int
    flags: int  # CHUNK_* bits; CHUNK_COMPRESSED decides whether to decompress
    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int
    digest: bytes  # 32 bytes over the uncompressed data (blake3 or sha256, see BlobInfo)
    crc32: int = 0  # CRC-32C, valid only with CHUNK_HAS_CRC32

    @property
    def compressed(self) -> bool:
        return bool(self.flags & CHUNK_COMPRESSED)


class ChunkPiece(NamedTuple):
    """The part of one chunk a read needs; chunk None means a hole (reads as zeros)."""

    chunk: ChunkInfo | None
    offset: int  # offset inside the chunk's uncompressed data (0 for holes)
    length: int


# what the chunk lookup functions (rafs.chunkmap) build their results of; passed to them on each
# call, so that the C module keeps no state of its own
PIECE_TYPES = (ChunkInfo, ChunkPiece)


class BlobInfo(NamedTuple):
    """One entry of the image's blob table. blob_id is untrusted: check is_valid_blob_id."""

    index: int
    blob_id: str
    chunk_count: int  # 0 when unknown (v5 without extended blob table)
    chunk_size: int
    compressor: str  # one of COMPRESSORS
    digester: str  # one of DIGESTERS
    features: int  # BLOB_* bits
    compressed_size: int  # 0 when unknown
    uncompressed_size: int  # 0 when unknown
    readahead_offset: int = 0
    readahead_size: int = 0
    ci_compressor: str = "none"
    ci_offset: int = 0
    ci_compressed_size: int = 0
    ci_uncompressed_size: int = 0
    toc_size: int = 0
    toc_digest: bytes = b""


class Image:
    """A mounted-ready view of one RAFS bootstrap. Subclasses: rafs.v5.V5Image, rafs.v6.V6Image.

    Inode numbers (`ino`) are what the filesystem reports as st_ino: v5 `i_ino`, v6 nid.
    `lookup` returns None when a name is absent; every other failure is a RafsError.
    """

    version: int  # 5 or 6
    path: str
    flags: int  # superblock flags
    chunk_size: int
    compressor: str  # superblock-level compressor
    digester: str  # superblock-level digester
    root_ino: int
    inode_count: int  # unique inodes (for statfs)
    blobs: list[BlobInfo]
    prefetch: list[int]  # inode numbers from the prefetch table, in order
    # the file read, as open_image found it: [st_dev, st_ino, st_size, st_mtime_ns] (None for
    # images opened from bytes); a file later replaced at the same path is another file
    file_id: list[int] | None = None

    @property
    def explicit_uid_gid(self) -> bool:
        return bool(self.flags & SB_EXPLICIT_UID_GID)

    def getattr(self, ino: int) -> Inode:
        """Attributes of inode `ino`; RafsError if no such inode."""
        raise NotImplementedError

    def lookup(self, parent_ino: int, name: bytes) -> Inode | None:
        """The child called `name` of directory `parent_ino`, or None."""
        raise NotImplementedError

    def readdir(self, ino: int, start: int = 0) -> Iterator[tuple[bytes, Inode, int]]:
        """Entries of directory `ino` (without . and ..) in name order, from position `start`.

        Yields (name, inode, next_position); pass next_position back as `start` to resume.
        """
        raise NotImplementedError

    def parent(self, ino: int) -> int:
        """The directory holding directory `ino` (the root's is the root): what `..` names."""
        raise NotImplementedError

    def readlink(self, ino: int) -> bytes:
        """Target of symlink `ino`."""
        raise NotImplementedError

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        """All extended attributes of `ino` (full names, e.g. b'user.foo'); {} when none."""
        raise NotImplementedError

    def chunks(self, ino: int, offset: int, size: int) -> list[ChunkPiece]:
        """Chunk pieces covering [offset, offset+size) of regular file `ino`, clamped to its size."""
        raise NotImplementedError

    def file_chunks(self, ino: int) -> list[ChunkInfo]:
        """Every chunk of regular file `ino` in file order (holes omitted)."""
        raise NotImplementedError

    def superblock_info(self) -> dict:
        """The superblock as nydusd's RafsSuperMeta names its fields (magic, version, table
        offsets and sizes, flags as {"bits": n}), without the daemon's timeouts."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the mapping of the bootstrap file (a no-op while chunk lists still use it)."""
        data = getattr(getattr(self, "buf", None), "data", None)
        if hasattr(data, "close"):
            try:
                data.close()
            except BufferError:
                pass
