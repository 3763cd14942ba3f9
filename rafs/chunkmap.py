"""Chunk lookup hot path: the C module rafs._speedups, or its pure-Python twin rafs._chunkmap.

`PYNYDUSD_PUREPYTHON=1` forces the twin. `IMPLEMENTATION` says which one is active ("c" or
"python"). Both give identical results and raise identical RafsErrors.
"""

from __future__ import annotations

import os

if os.environ.get("PYNYDUSD_PUREPYTHON") == "1":
    from ._chunkmap import ci_entry, v5_pieces, v6_indexes

    IMPLEMENTATION = "python"
else:
    try:
        from ._speedups import ci_entry, v5_pieces, v6_indexes

        IMPLEMENTATION = "c"
    except ImportError:
        from ._chunkmap import ci_entry, v5_pieces, v6_indexes

        IMPLEMENTATION = "python"

__all__ = ["IMPLEMENTATION", "ci_entry", "v5_pieces", "v6_indexes"]
