"""Checks for names and xattrs read from an image (both are untrusted)."""

from __future__ import annotations

import struct

from .errors import RafsError

XATTR_PREFIXES = (b"user.", b"security.", b"trusted.")
XATTR_WHOLE_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")
XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 65536
NAME_MAX = 255


def check_name(name: bytes, structure: str, offset: int) -> None:
    """Reject names a directory entry may not have: empty, '.', '..', '/', NUL, > 255 bytes."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name or len(name) > NAME_MAX:
        raise RafsError("invalid file name", structure=structure, field="name",
                        value=name[:64], offset=offset)


def check_xattr_name(name: bytes, structure: str, offset: int) -> None:
    """Reject xattr names outside the namespaces RAFS allows (rafs-format.md 2.7)."""
    ok = name in XATTR_WHOLE_NAMES or (
        name.startswith(XATTR_PREFIXES) and len(name) > name.index(b".") + 1)
    if not ok or len(name) > XATTR_NAME_MAX or b"\0" in name:
        raise RafsError("invalid xattr name", structure=structure, field="xattr name",
                        value=name[:64], offset=offset)


def parse_xattr_pairs_v5(raw: bytes, base: int) -> dict[bytes, bytes]:
    """Decode a v5 xattr table body: repeated (u32 pair size, name, NUL, value)."""
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise RafsError("truncated xattr pair", structure="xattr table", field="pair_size",
                            offset=base + pos)
        (pair,) = struct.unpack_from("<I", raw, pos)
        body = raw[pos + 4:pos + 4 + pair]
        sep = body.find(b"\0")
        if len(body) != pair or sep <= 0:
            raise RafsError("bad xattr pair", structure="xattr table", field="pair_size",
                            value=pair, offset=base + pos)
        name, value = body[:sep], body[sep + 1:]
        check_xattr_name(name, "xattr table", base + pos + 4)
        if len(value) > XATTR_VALUE_MAX:
            raise RafsError("xattr value too large", structure="xattr table", field="value",
                            value=len(value), offset=base + pos)
        out[name] = value
        pos += 4 + pair
    return out
