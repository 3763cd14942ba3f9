"""A tar stream (an OCI layer) as the builder's source tree.

Regular file contents are spooled to a temporary directory (a stream cannot be read twice), hard
links share one inode, missing parent directories are created (0755), a later entry replaces an
earlier one of the same path. OCI whiteouts are kept as they are (`oci`, nydus-image's default) or
turned into what overlayfs expects (`overlayfs`: `.wh.NAME` -> char device 0/0 `NAME`,
`.wh..wh..opq` -> `trusted.overlay.opaque=y` on the directory).
"""

from __future__ import annotations

import math
import os
import stat
import sys
import tarfile
from typing import NamedTuple

from ..errors import RafsError
from .tree import Node

WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"
_TYPES = {tarfile.REGTYPE: stat.S_IFREG, tarfile.AREGTYPE: stat.S_IFREG,
          tarfile.CONTTYPE: stat.S_IFREG, tarfile.DIRTYPE: stat.S_IFDIR,
          tarfile.SYMTYPE: stat.S_IFLNK, tarfile.CHRTYPE: stat.S_IFCHR,
          tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO}


class TarStat(NamedTuple):
    """The os.stat_result fields the writers read."""

    st_mode: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_rdev: int
    st_dev: int
    st_ino: int
    st_nlink: int = 1


def _split(name: str) -> list[bytes]:
    parts = [p for p in os.fsencode(name).split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise RafsError(f"tar entry {name!r} escapes the root with '..'")
    for p in parts:
        if len(p) > 255:
            raise RafsError(f"tar entry name too long to store: {name!r}")
    return parts


def _dir_node(name: bytes, ino: int) -> Node:
    st = TarStat(stat.S_IFDIR | 0o755, 0, 0, 0, 0, 0, 1, ino)
    return Node(name, "", st)


def scan_tar(source: str, spool_dir: str, whiteout_spec: str = "oci") -> Node:
    """Read the tar at `source` ('-' for stdin) into a Node tree; file data goes to `spool_dir`."""
    try:
        f = sys.stdin.buffer if source == "-" else open(source, "rb")
    except OSError as e:
        raise RafsError(f"cannot read {source}: {e.strerror}") from None
    root = _dir_node(b"/", 0)
    index: dict[tuple[bytes, ...], Node] = {(): root}
    count = 0
    try:
        with tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                count += 1
                _add(tar, member, count, root, index, spool_dir, whiteout_spec)
    except (tarfile.TarError, EOFError) as e:
        if count or str(e) != "empty file":  # an empty stream is an empty layer
            raise RafsError(f"{source}: not a readable tar stream: {e}") from None
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    for node in index.values():
        node.children.sort(key=lambda n: n.name)
    return root


def _parent(parts: list[bytes], index: dict, count: int) -> Node:
    node = index[()]
    for depth in range(len(parts) - 1):
        key = tuple(parts[:depth + 1])
        child = index.get(key)
        if child is None:
            child = _dir_node(parts[depth], (1 << 40) + len(index))
            node.children.append(child)
            index[key] = child
        elif not child.is_dir:
            raise RafsError(f"tar entry {b'/'.join(parts)!r} lies under non-directory {key!r}")
        node = child
    return node


def _add(tar, member, count, root, index, spool_dir, whiteout_spec) -> None:
    parts = _split(member.name)
    if not parts:  # "./": the root itself
        return
    name = parts[-1]
    parent = _parent(parts, index, count)
    if whiteout_spec == "overlayfs" and name.startswith(WHITEOUT):
        if name == OPAQUE:
            parent.xattrs[b"trusted.overlay.opaque"] = b"y"
            return
        parts[-1] = name = name[len(WHITEOUT):]
        mtime = _mtime(member)
        st = TarStat(stat.S_IFCHR, 0, 0, 0, mtime * 10**9, 0, 1, count)
        _place(parent, index, parts, Node(name, "", st))
        return
    if member.islnk():
        target = index.get(tuple(_split(member.linkname)))
        if target is None:
            raise RafsError(f"hard link {member.name!r} to missing file {member.linkname!r}")
        if target.is_dir:
            raise RafsError(f"hard link {member.name!r} to directory {member.linkname!r}")
        _place(parent, index, parts, Node(name, target.path, target.st, symlink=target.symlink,
                                          xattrs=target.xattrs))
        return
    kind = _TYPES.get(member.type)
    if kind is None:
        raise RafsError(f"tar entry {member.name!r} has unsupported type {member.type!r}")
    rdev = os.makedev(member.devmajor, member.devminor) if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
    mtime = _mtime(member)
    st = TarStat(kind | (member.mode & 0o7777), member.uid, member.gid,
                 member.size if kind == stat.S_IFREG else 0, mtime * 10**9, rdev, 1, count)
    xattrs = {k[len("SCHILY.xattr."):].encode("utf-8", "surrogateescape"): v.encode(
        "utf-8", "surrogateescape") for k, v in member.pax_headers.items()
        if k.startswith("SCHILY.xattr.")}
    path = ""
    if kind == stat.S_IFREG:
        path = os.path.join(spool_dir, str(count))
        src = tar.extractfile(member)
        with open(path, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
    link = os.fsencode(member.linkname) if kind == stat.S_IFLNK else b""
    node = Node(name, path, st, symlink=link, xattrs=dict(sorted(xattrs.items())))
    existing = index.get(tuple(parts))
    if existing is not None and existing.is_dir and kind == stat.S_IFDIR:
        existing.st, existing.xattrs = st, node.xattrs  # a directory entry after its children
        return
    _place(parent, index, parts, node)


def _mtime(member: tarfile.TarInfo) -> int:
    """Whole seconds, floored, as nydus-image takes them from a tar; an mtime no inode can hold
    (NaN, infinite, beyond 64 bits signed) is refused by name."""
    try:
        mtime = math.floor(member.mtime)
    except (ValueError, OverflowError, TypeError):
        mtime = None
    if mtime is None or not -(1 << 63) <= mtime < 1 << 63:
        raise RafsError(f"tar entry {member.name!r} has an mtime no inode can hold: "
                        f"{str(member.mtime)[:40]}")
    return mtime


def _place(parent: Node, index: dict, parts: list[bytes], node: Node) -> None:
    key = tuple(parts)
    old = index.get(key)
    if old is not None:
        parent.children.remove(old)
        for k in [k for k in index if k[:len(key)] == key]:
            del index[k]
    parent.children.append(node)
    index[key] = node
