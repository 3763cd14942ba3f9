"""`pynydus-image prefetch-list`: turn what a mount recorded of a workload's reads
(GET /api/v1/metrics/pattern, or /api/v1/metrics/files?latest=true) into the paths to prefetch, one
per line, for `pynydusd --prefetch-files` or `pynydus-image create --prefetch-policy fs`."""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from pathlib import Path

import rafs
from daemon.filestats import fuse_ino
from rafs.localblob import walk


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `pynydus-image prefetch-list`."""
    parser.add_argument("bootstrap", help="the bootstrap the mount served")
    parser.add_argument("record", nargs="?", default="-",
                        help="the API's JSON answer (a file, or - for standard input): the "
                             "pattern's files in the order of first reads, or latest runs")


def runs_of(record: object) -> list[tuple[int, int]]:
    """The inode numbers a record names, in its order, as runs (first, last); ValueError when
    it is neither shape."""
    out: list[tuple[int, int]] = []
    if not isinstance(record, list):
        raise ValueError("expected a JSON list (from /api/v1/metrics/pattern or files?latest=true)")
    for item in record:
        if isinstance(item, dict) and type(item.get("ino")) is int:
            out.append((item["ino"], item["ino"]))
        elif (isinstance(item, list) and 1 <= len(item) <= 2
              and all(type(i) is int and i >= 0 for i in item) and item[0] <= item[-1]):
            out.append((item[0], item[-1]))
        else:
            raise ValueError(f"not an access pattern entry nor an inode run: {str(item)[:80]}")
    return out


def run(args: argparse.Namespace) -> int:
    """Print the image paths of the regular files the record names, in its order."""
    try:
        text = sys.stdin.read() if args.record == "-" else Path(args.record).read_text("utf-8")
        runs = runs_of(json.loads(text))
        image = rafs.open_image(args.bootstrap)
    except (OSError, ValueError, rafs.RafsError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    paths: dict[int, bytes] = {}
    for path, inode in walk(image):  # the first path of each regular file (hard links share)
        if inode.is_reg:
            paths.setdefault(inode.ino, path)
    # the mount's inode numbers of the image's files, sorted: a run selects those inside it
    # (a run names numbers, not files: it may be far wider than the image)
    by_fuse = sorted((fuse_ino(ino, image.root_ino), path) for ino, path in paths.items())
    keys = [k for k, _path in by_fuse]
    out = sys.stdout.buffer
    seen = set()
    for first, last in runs:
        for _k, path in by_fuse[bisect.bisect_left(keys, first):bisect.bisect_right(keys, last)]:
            if path in seen:
                continue
            seen.add(path)
            if b"\n" in path:  # one path per line: a name holding a newline cannot be listed
                print(f"skipped {path!r}: its name holds a newline", file=sys.stderr)
                continue
            out.write(path + b"\n")
    return 0
