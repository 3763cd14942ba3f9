"""The real upstream images in ../shared/fixtures/nydus, and small helpers over them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import rafs
from rafs.localblob import LocalBlobs, walk

INLINE_BLOB = "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"


def real_images(root: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (path given to open_image, blob directory) for the images that have blobs."""
    return {
        "v5-sha256-none": (root / "v5-sha256-none/bootstrap", root / "v5-sha256-none/blobs"),
        "v6-zstd": (root / "v6-zstd/bootstrap", root / "v6-zstd/blobs"),
        "v6-inline": (root / "v6-blob-with-inline-bootstrap/blobs" / INLINE_BLOB,
                      root / "v6-blob-with-inline-bootstrap/blobs"),
    }


def manifest(image: rafs.Image, blob_dir: Path | None = None) -> dict[bytes, tuple]:
    """path -> (mode, uid, gid, size, nlink, mtime, rdev, symlink, xattrs, sha256 of content)."""
    blobs = LocalBlobs(image, str(blob_dir)) if blob_dir else None
    out = {}
    for path, inode in walk(image):
        link = image.readlink(inode.ino) if inode.is_symlink else None
        digest = None
        if blobs is not None and inode.is_reg:
            digest = hashlib.sha256(blobs.read_file(inode.ino)).hexdigest()
        out[path] = (inode.mode, inode.uid, inode.gid, inode.size, inode.nlink, inode.mtime,
                     inode.rdev, link, image.xattrs(inode.ino), digest)
    if blobs is not None:
        blobs.close()
    return out
