"""The on-disk record layouts of RAFS (docs rafs-format.md), one struct each, shared by the readers
(v5, v6, the chunk-lookup twin, blob meta, ToC) and the writers. Field order is the file's;
trailing reserved bytes are left out where the record is read and written in place."""

from __future__ import annotations

import struct

# both versions: a chunk record (v5: after its file's inode; v6: the chunk table), 80 bytes:
# digest, blob_index, flags, compressed_size, uncompressed_size, compressed_offset,
# uncompressed_offset, file_offset, index, crc32
CHUNK_RECORD = struct.Struct("<32sIIIIQQQII")

# v5 (8 KiB superblock at 0; 128-byte inodes with i_mtime signed, as the kernel reads it;
# 64-byte extended blob table entries)
V5_SUPER = struct.Struct("<IIIIQQQQQIIIIQ")
V5_INODE = struct.Struct("<32sQQIIIIQQQIIIHHIIq8x")
V5_EXT_BLOB = struct.Struct("<IIQQ40x")

# v6: the erofs superblock at 1024 (its 38 reserved bytes left out), the nydus extended superblock
# at 1152 (its 200 reserved bytes left out), a device slot, a blob table entry, the two inode
# forms (i_mtime signed), a directory entry, a chunk index (8 bytes: blob, chunk index, blkaddr)
V6_SUPER = struct.Struct("<IIIBBHQQIIII16s16sIHHH")
V6_SUPER_EXT = struct.Struct("<QQIIQQQI4x")
V6_DEVICE_SLOT = struct.Struct("<64sII56x")
V6_BLOB = struct.Struct("<64sIIIIIIQQIIQQQ32s32sQ8sI36x")
V6_COMPACT_INODE = struct.Struct("<HHHHI4xIIHH4x")
V6_EXTENDED_INODE = struct.Struct("<HHH2xQIIIIqII16x")
V6_DIRENT = struct.Struct("<QHBx")
V6_CHUNK_INDEX = struct.Struct("<HHI")

# a v6 blob's tail: the ci table header (blob.meta.header, 4 KiB, these fields first) and ToC entries
BLOB_META_HEADER = struct.Struct("<IIIIQQQQQI")
TOC_ENTRY = struct.Struct("<I4x16s32sQQQ48x")
