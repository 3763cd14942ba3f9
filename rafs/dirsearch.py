"""Search of one name in a directory: the C functions rafs._speedups.find_dirent (v6) and
v5_find_child (v5), or their pure-Python twins in rafs._dirsearch (identical results and
errors). The choice is the one rafs.chunkmap makes: `PYNYDUSD_PUREPYTHON=1` forces the twins;
IMPLEMENTATION says which is active ("c" or "python").
"""

from __future__ import annotations

from .chunkmap import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from ._speedups import find_dirent, v5_find_child
else:
    from ._dirsearch import find_dirent, v5_find_child

__all__ = ["IMPLEMENTATION", "find_dirent", "v5_find_child"]
