"""The in-memory tree a layout writer consumes, scanned from a directory without recursion."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import RafsError
from ..names import XATTR_PREFIXES, XATTR_WHOLE_NAMES


@dataclass
class Node:
    """One path of the source tree."""

    name: bytes
    path: str  # source path on disk
    st: os.stat_result
    children: list[Node] = field(default_factory=list)
    symlink: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def link_key(self) -> tuple[int, int] | None:
        """What the names of one inode share, (st_dev, st_ino); None for a directory: hard links
        of any other kind share one inode, as upstream's builder groups them."""
        return None if self.is_dir else (self.st.st_dev, self.st.st_ino)


def _xattrs(path: str) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        b = n.encode("utf-8", "surrogateescape")
        if b.startswith(XATTR_PREFIXES) or b in XATTR_WHOLE_NAMES:
            out[b] = os.getxattr(path, n, follow_symlinks=False)
    return dict(sorted(out.items()))


def scan(root: str) -> Node:
    """Read the tree under `root` (children sorted by name bytes); errors name the path."""
    try:
        top = Node(b"/", root, os.lstat(root), xattrs=_xattrs(root))
    except OSError as e:
        raise RafsError(f"cannot read source {root}: {e.strerror}") from None
    if not top.is_dir:
        raise RafsError(f"source {root} is not a directory")
    stack = [top]
    while stack:
        node = stack.pop()
        try:
            names = sorted(os.listdir(os.fsencode(node.path)))
        except OSError as e:
            raise RafsError(f"cannot list {node.path}: {e.strerror}") from None
        for name in names:
            if len(name) > 255:
                raise RafsError(f"name too long to store: {os.fsdecode(name)!r}")
            path = os.path.join(node.path, os.fsdecode(name))
            try:
                st = os.lstat(path)
                link = os.readlink(os.fsencode(path)) if stat.S_ISLNK(st.st_mode) else b""
            except OSError as e:
                raise RafsError(f"cannot read {path}: {e.strerror}") from None
            child = Node(name, path, st, symlink=link, xattrs=_xattrs(path))
            node.children.append(child)
            if child.is_dir:
                stack.append(child)
    return top


def bfs(root: Node) -> Iterator[tuple[Node, Node | None]]:
    """(node, parent) in RAFS v5 index order: the root, then each directory's children in turn."""
    yield root, None
    queue = [root]
    i = 0
    while i < len(queue):
        parent = queue[i]
        i += 1
        for child in parent.children:
            yield child, parent
            if child.is_dir:
                queue.append(child)


def find(root: Node, path: str) -> Node:
    """The node at absolute `path` (for prefetch lists); RafsError if absent."""
    node = root
    for part in os.fsencode(path).strip(b"/").split(b"/"):
        if not part:
            continue
        node = next((c for c in node.children if c.name == part), None)
        if node is None:
            raise RafsError(f"prefetch path {path!r} is not in the source tree")
    return node
