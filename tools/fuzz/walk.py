"""Walk every inode of an image through every interface call the daemon makes."""

from __future__ import annotations

import rafs

MAX_VISITS = 3000


def exercise(image: rafs.Image, max_visits: int = MAX_VISITS) -> int:
    """Lookup, getattr, parent, readdir, xattrs, readlink and chunk pieces of every inode reachable from
    the root, bounded by max_visits so a lying image cannot make us walk forever. Returns the
    number of entries visited."""
    visits = 0
    stack = [image.root_ino]
    image.getattr(image.root_ino)
    while stack and visits < max_visits:
        ino = stack.pop()
        try:
            image.parent(ino)  # what readdir's ".." entry asks (the daemon lists without it
        except rafs.RafsError:  # when it cannot be told, and goes on)
            pass
        entries = []
        for entry in image.readdir(ino):
            entries.append(entry)
            if len(entries) + visits >= max_visits:
                break
        for name, inode, _pos in entries:
            visits += 1
            # once readdir has seen the directory in order, lookup must find every entry
            if image.lookup(ino, name) != inode:
                raise AssertionError(f"lookup of {name!r} disagrees with readdir")
            image.getattr(inode.ino)
            image.xattrs(inode.ino)
            if inode.is_dir:
                stack.append(inode.ino)
            elif inode.is_symlink:
                image.readlink(inode.ino)
            elif inode.is_reg:
                pieces = image.chunks(inode.ino, 0, inode.size)
                image.chunks(inode.ino, inode.size // 2, 1 << 20)
                by_index = getattr(image, "chunk_by_index", None)  # read widening's neighbours
                if by_index is not None:
                    for p in pieces[:2]:
                        if p.chunk is not None:
                            by_index(p.chunk.blob_index, p.chunk.chunk_index + 1)
        image.lookup(ino, b"no-such-name")
    return visits
