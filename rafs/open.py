"""open_image: pick the right reader for a bootstrap (v5, v6) or a blob with an inlined bootstrap."""

from __future__ import annotations

import mmap
import os

from .buf import Buf
from .errors import RafsError
from .model import Image

V5_MAGIC = 0x52414653
V6_MAGIC = 0xE0F5E1E2
V6_SUPER_OFFSET = 1024


def open_image(path: str | os.PathLike) -> Image:
    """Open a RAFS v5 bootstrap, a v6 bootstrap, or a v6 blob that carries its bootstrap (ToC)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        size = st.st_size
        if size == 0:
            raise RafsError(f"{path}: empty file is not a RAFS image")
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        image = open_buffer(data, path)
    except BaseException:
        data.close()
        raise
    if image is None:
        data.close()
        raise RafsError(f"{path}: not a RAFS image (no v5 magic, no v6 magic, no blob ToC)")
    image.file_id = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
    return image


def open_bytes(data: bytes, name: str = "<bytes>") -> Image:
    """Open an image held in memory (a bootstrap, or a blob that carries its bootstrap)."""
    image = open_buffer(data, name)
    if image is None:
        raise RafsError(f"{name}: not a RAFS image (no v5 magic, no v6 magic, no blob ToC)")
    return image


def open_buffer(data, path: str) -> Image | None:
    """The image in `data` (bytes or mmap), or None when it has no RAFS magic. An mmap is closed
    here when the image was copied out of it (an inlined bootstrap)."""
    buf = Buf(data, os.path.basename(path))
    size = len(data)
    if size >= 8 and buf.u32(0, "superblock", "magic") == V5_MAGIC:
        from .v5 import V5Image

        return V5Image(buf, path)
    if size >= V6_SUPER_OFFSET + 4 and buf.u32(V6_SUPER_OFFSET, "superblock", "magic") == V6_MAGIC:
        from .v6 import V6Image

        return V6Image(buf, path)
    from .toc import open_inline_bootstrap

    image = open_inline_bootstrap(buf, path)
    if image is not None and isinstance(data, mmap.mmap):
        data.close()  # the inlined bootstrap was copied out of the blob
    return image
