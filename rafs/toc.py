"""Blob table of contents (rafs-format.md 6.3-6.4) and bootstraps inlined into blobs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import NamedTuple

from . import codecs
from .buf import Buf
from .errors import RafsError, UnsupportedImageError
from .layouts import TOC_ENTRY
from .model import Image

TAR_BLOCK = 512
TOC_NAME = b"rafs.blob.toc"
BOOT_NAME = b"image.boot"
TOC_NONE, TOC_ZSTD, TOC_LZ4 = 0x1, 0x2, 0x4
MAX_TOC = 1 << 20
MAX_BOOTSTRAP = 1 << 31


class TocEntry(NamedTuple):
    flags: int
    name: bytes
    digest: bytes
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int


def tar_header(raw: bytes) -> tuple[bytes, int] | None:
    """(name, size) of a ustar/GNU tar header block, or None if `raw` is not one."""
    if len(raw) != TAR_BLOCK or raw[257:262] != b"ustar":
        return None
    name = raw[:100].split(b"\0", 1)[0]
    field = raw[124:136].split(b"\0", 1)[0].strip()
    try:
        size = int(field or b"0", 8)
    except ValueError:
        return None
    return name, size


def read_toc(read: Callable[[int, int], bytes], blob_size: int) -> list[TocEntry] | None:
    """The ToC entries at the end of a blob, or None if it has no ToC."""
    if blob_size < TAR_BLOCK:
        return None
    hdr = tar_header(bytes(read(blob_size - TAR_BLOCK, TAR_BLOCK)))
    if hdr is None or hdr[0] != TOC_NAME:
        return None
    size = hdr[1]
    if size % TOC_ENTRY.size or size > MAX_TOC or size > blob_size - TAR_BLOCK:
        raise RafsError("bad blob ToC size", structure="blob ToC", field="size", value=size,
                        offset=blob_size - TAR_BLOCK)
    raw = bytes(read(blob_size - TAR_BLOCK - size, size))
    out = []
    for pos in range(0, size, TOC_ENTRY.size):
        flags, name, digest, c_off, c_size, d_size = TOC_ENTRY.unpack_from(raw, pos)
        out.append(TocEntry(flags, name.rstrip(b"\0"), digest, c_off, c_size, d_size))
    return out


def extract_entry(entry: TocEntry, read: Callable[[int, int], bytes], blob_size: int) -> bytes:
    """Content of one ToC entry, decompressed and checked against its sha256."""
    if entry.compressed_offset + entry.compressed_size > blob_size or entry.uncompressed_size > MAX_BOOTSTRAP:
        raise RafsError("ToC entry outside the blob", structure="blob ToC",
                        field=entry.name.decode(errors="replace"), value=entry.compressed_offset)
    raw = bytes(read(entry.compressed_offset, entry.compressed_size))
    if entry.flags & TOC_ZSTD:
        data = codecs.decompress("zstd", raw, entry.uncompressed_size)
    elif entry.flags & TOC_LZ4:
        raise UnsupportedImageError("lz4_block compressed ToC entry")
    else:
        data = raw
    if hashlib.sha256(data).digest() != entry.digest:
        raise RafsError("ToC entry digest mismatch", structure="blob ToC",
                        field=entry.name.decode(errors="replace"))
    return data


def inline_bootstrap(read: Callable[[int, int], bytes], size: int) -> bytes | None:
    """The bootstrap bytes a blob carries (via its ToC, or the older raw `image.boot`), or None."""
    entries = read_toc(read, size)
    if entries is not None:
        for e in entries:
            if e.name == BOOT_NAME:
                return extract_entry(e, read, size)
        return None
    hdr = tar_header(read(size - TAR_BLOCK, TAR_BLOCK)) if size >= TAR_BLOCK else None
    if hdr is not None and hdr[0] == BOOT_NAME and hdr[1] <= size - TAR_BLOCK:
        return read(size - TAR_BLOCK - hdr[1], hdr[1])
    return None


def open_inline_bootstrap(buf: Buf, path: str) -> Image | None:
    """Open the bootstrap stored inside blob file `path`, or None if it carries none.

    The placeholder blob id of the inlined bootstrap is replaced by the file's own name, and the
    blob's ci table is attached from the same file.
    """
    def read(off: int, n: int) -> bytes:
        return buf.bytes(off, n, "blob")

    boot = inline_bootstrap(read, buf.size)
    if boot is None:
        return None
    from .blobmeta import read_ci_table
    from .v6 import V6_MAGIC, V6Image

    boot_buf = Buf(boot, "inlined bootstrap")
    if len(boot) < 1028 or boot_buf.u32(1024, "superblock", "magic") != V6_MAGIC:
        raise RafsError("inlined bootstrap is not RAFS v6", structure="blob ToC", field="image.boot")
    stem = os.path.basename(path).split(".")[0]
    image = V6Image(boot_buf, path, blob_id_override=stem)
    if image.blobs:
        blob = image.blobs[-1]
        image.attach_ci_table(blob.index, read_ci_table(blob, read))
    return image
