"""Chunk lookup hot path: the C module rafs._speedups, or its pure-Python twin rafs._chunkmap.

Both provide v5_pieces (v5 chunk records -> ChunkPieces), v6_pieces (v6 chunk indexes resolved
through the chunk map and the ci tables -> ChunkPieces), v6_chunk (one v6 chunk), chunk_map (the
v6 chunk map, from the bootstrap's chunk table), ci_entry (one ci table entry) and merge_runs (the
chunks a read must fetch, grouped into runs of adjacent compressed ranges), with identical results
and identical errors. `chunk_key` (pure Python,
shared) packs the v6 chunk-map keys both expect. `PYNYDUSD_PUREPYTHON=1` forces the twin;
`IMPLEMENTATION` says which one is active ("c" or "python"); the C module is used only when it
has every function of C_FUNCTIONS and the signatures of C_API (rafs.dirsearch makes the same
choice). The pieces functions take the result types, model.PIECE_TYPES, as their last argument.
"""

from __future__ import annotations

import os

from ._chunkmap import chunk_key

# what a build of the C module must provide to be used (an older build lacks the newer ones)
C_FUNCTIONS = ("chunk_map", "ci_entry", "merge_runs", "v5_pieces", "v6_chunk", "v6_pieces",
               "find_dirent", "v5_find_child")
C_API = 2  # the signatures the Python side calls (a build from older sources has another API)


def _c_module():
    if os.environ.get("PYNYDUSD_PUREPYTHON") == "1":
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    if getattr(_speedups, "API", None) != C_API:
        return None
    return _speedups if all(hasattr(_speedups, name) for name in C_FUNCTIONS) else None


if _c_module() is not None:
    from ._speedups import chunk_map, ci_entry, merge_runs, v5_pieces, v6_chunk, v6_pieces

    IMPLEMENTATION = "c"
else:
    from ._chunkmap import chunk_map, ci_entry, merge_runs, v5_pieces, v6_chunk, v6_pieces

    IMPLEMENTATION = "python"

__all__ = ["IMPLEMENTATION", "chunk_key", "chunk_map", "ci_entry", "merge_runs", "v5_pieces",
           "v6_chunk", "v6_pieces"]
