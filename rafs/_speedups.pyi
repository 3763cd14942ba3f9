"""Type stub of the C module rafs._speedups (twin: rafs._chunkmap)."""

from typing import Any

from .model import ChunkPiece

Buffer = Any  # bytes, memoryview, mmap: anything with the buffer protocol

def v5_pieces(buf: Buffer, records_off: int, count: int, chunk_size: int, file_size: int,
              blob_count: int, offset: int, size: int) -> list[ChunkPiece]: ...
def v6_indexes(buf: Buffer, index_off: int, chunk_size: int, file_size: int, offset: int,
               size: int) -> list[tuple[int, int, int, int, int, int, int]]: ...
def ci_entry(data: Buffer, version: int, count: int, index: int) -> tuple[int, int, int, int, int]: ...
