"""Bounds-checked little-endian access to an image's bytes."""

from __future__ import annotations

import struct

from .errors import RafsError

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class Buf:
    """A read-only byte buffer (bytes, memoryview or mmap) whose reads never go out of range.

    Every accessor names the structure and field it reads, so a short or lying file raises a
    `RafsError` that says what was being read and where, never `struct.error` or `IndexError`.
    """

    __slots__ = ("data", "size", "name")

    def __init__(self, data, name: str = "bootstrap") -> None:
        self.data = data
        self.size = len(data)
        self.name = name

    def check(self, offset: int, length: int, structure: str, field: str = "") -> None:
        """Raise RafsError unless [offset, offset+length) lies inside the buffer."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise RafsError(
                f"{self.name} is too short: need {length} bytes at {offset:#x}, file has {self.size}",
                structure=structure, field=field, offset=offset)

    def bytes(self, offset: int, length: int, structure: str, field: str = "") -> bytes:
        self.check(offset, length, structure, field)
        return bytes(self.data[offset:offset + length])

    def u16(self, offset: int, structure: str, field: str = "") -> int:
        self.check(offset, 2, structure, field)
        return _U16.unpack_from(self.data, offset)[0]

    def u32(self, offset: int, structure: str, field: str = "") -> int:
        self.check(offset, 4, structure, field)
        return _U32.unpack_from(self.data, offset)[0]

    def u64(self, offset: int, structure: str, field: str = "") -> int:
        self.check(offset, 8, structure, field)
        return _U64.unpack_from(self.data, offset)[0]

    def unpack(self, st: struct.Struct, offset: int, structure: str) -> tuple:
        """Unpack a whole struct at offset, bounds-checked."""
        self.check(offset, st.size, structure)
        return st.unpack_from(self.data, offset)
