"""Errors raised by the format layer."""

from __future__ import annotations


class RafsError(ValueError):
    """A bootstrap or blob is malformed: names the structure, field, value and file offset."""

    def __init__(self, message: str, *, structure: str = "", field: str = "",
                 value: object = None, offset: int | None = None) -> None:
        parts = [message]
        where = ".".join(p for p in (structure, field) if p)
        if where:
            parts.append(f"[{where}")
            if value is not None:
                parts[-1] += f"={value!r}"
            if offset is not None:
                parts[-1] += f" at offset {offset:#x}"
            parts[-1] += "]"
        elif offset is not None:
            parts.append(f"[at offset {offset:#x}]")
        super().__init__(" ".join(parts))
        self.structure = structure
        self.field = field
        self.value = value
        self.offset = offset


class UnsupportedImageError(RafsError):
    """The image is well formed but uses a feature this implementation does not serve."""

    def __init__(self, feature: str, detail: str = "") -> None:
        msg = f"unsupported image feature: {feature}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)
        self.feature = feature


class ChunkDataError(RafsError):
    """Chunk data failed to decompress, had the wrong size, or its digest did not match."""
