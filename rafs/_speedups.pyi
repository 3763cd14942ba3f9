"""Type stub of the C module rafs._speedups (reference twin: rafs._chunkmap)."""

from collections.abc import Sequence
from typing import Any

from .model import ChunkInfo, ChunkPiece

API: int  # 2: the pieces functions take the result types (model.PIECE_TYPES)

Buffer = Any  # bytes, memoryview, mmap: anything with the buffer protocol
Types = tuple[type[ChunkInfo], type[ChunkPiece]]  # model.PIECE_TYPES
CiTableData = tuple[bytes, int, int]  # (data, version, count) of a blob's ci table

def v5_pieces(buf: Buffer, records_off: int, count: int, chunk_size: int, file_size: int,
              blob_count: int, offset: int, size: int, types: Types) -> list[ChunkPiece]: ...
def v6_pieces(buf: Buffer, index_off: int, chunk_size: int, file_size: int, offset: int,
              size: int, block_size: int, blob_count: int, chunk_map: dict[int, int],
              ci_tables: Sequence[CiTableData | None], types: Types) -> list[ChunkPiece]: ...
def v6_chunk(buf: Buffer, blob: int, chunk_index: int, blkaddr: int, want: int, where: int,
             block_size: int, blob_count: int, chunk_map: dict[int, int],
             ci_tables: Sequence[CiTableData | None], types: Types) -> ChunkInfo: ...
def chunk_map(buf: Buffer, off: int, size: int, block_size: int) -> dict[int, int]: ...
def ci_entry(data: Buffer, version: int, count: int, index: int) -> tuple[int, int, int, int, int]: ...
def merge_runs(chunks: Sequence[ChunkInfo], max_size: int) -> list[list[ChunkInfo]]: ...
def find_dirent(buf: Buffer, nid: int, data_off: int, tail_off: int, size: int, block_size: int,
                inode_off: int, name: bytes) -> tuple[int, int] | None: ...
def v5_find_child(buf: Buffer, itable_off: int, itable_entries: int, child_index: int,
                  child_count: int, name: bytes) -> int: ...
