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
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise RafsError(f"{path}: empty file is not a RAFS image")
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buf = Buf(data, os.path.basename(path))
    try:
        if size >= 8 and buf.u32(0, "superblock", "magic") == V5_MAGIC:
            from .v5 import V5Image

            return V5Image(buf, path)
        if size >= V6_SUPER_OFFSET + 4 and buf.u32(V6_SUPER_OFFSET, "superblock", "magic") == V6_MAGIC:
            from .v6 import V6Image

            return V6Image(buf, path)
        from .toc import open_inline_bootstrap

        image = open_inline_bootstrap(buf, path)
        if image is not None:
            data.close()  # the inlined bootstrap was copied out of the blob
            return image
    except BaseException:
        data.close()
        raise
    data.close()
    raise RafsError(f"{path}: not a RAFS image (no v5 magic, no v6 magic, no blob ToC)")
