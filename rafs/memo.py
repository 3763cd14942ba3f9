"""A bounded memo of decoded image data."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(dict[K, V]):
    """A dict that empties itself when it is full. The image never changes, so forgetting is never
    wrong, and clearing now and then costs less than tracking which entries were used."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        """Store value under key (emptying the memo first when it is full) and return it."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
