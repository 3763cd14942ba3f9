"""nydusd's metric buckets: which slot of its fixed-size histograms a size or a latency counts in."""

from __future__ import annotations


def size_bucket(size: int) -> int:
    """Request-size slot 0..7: <1K, 1K~, 4K~, 16K~, 64K~, 128K~, 512K~, 1M~ (nydusd's
    `request_size_index`)."""
    zeros = 64 - (max(size, 0) >> 10).bit_length()
    return (0x0112_2334_5567 >> ((max(zeros, 53) - 53) << 2)) & 0xF


_MS = (1, 20, 50, 100, 500, 1000, 2000)
_FOP_US = (200, 1000, 20_000, 50_000, 500_000, 1_000_000, 2_000_000)


def backend_latency_bucket(ms: float) -> int:
    """Backend latency slot 0..7: <=1, <=20, <=50, <=100, <=500, <=1000, <=2000, >2000 ms."""
    return next((i for i, top in enumerate(_MS) if ms <= top), 7)


def read_latency_bucket(us: float) -> int:
    """FUSE read latency slot 0..7: <=200 us, <=1, <=20, <=50, <=500 ms, <=1 s, <=2 s, >2 s."""
    return next((i for i, top in enumerate(_FOP_US) if us <= top), 7)
