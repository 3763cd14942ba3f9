"""Search of one name in a v6 directory: the C function rafs._speedups.find_dirent, or its
pure-Python twin rafs._dirsearch.find_dirent (identical results and errors). The choice is the
one rafs.chunkmap makes: `PYNYDUSD_PUREPYTHON=1` forces the twin; IMPLEMENTATION says which is
active ("c" or "python").
"""

from __future__ import annotations

from .chunkmap import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from ._speedups import find_dirent
else:
    from ._dirsearch import find_dirent

__all__ = ["IMPLEMENTATION", "find_dirent"]
