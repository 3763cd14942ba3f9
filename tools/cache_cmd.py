"""`pynydusd-cache`: what the chunk cache of a work_dir holds, and removing what is not needed.

    pynydusd-cache list [WORK_DIR] [--json]
    pynydusd-cache gc [WORK_DIR] [--keep-image BOOTSTRAP]... [--unused-for 7d] [--max-size 20G]
                      [--dry-run]

WORK_DIR is what the daemon was given as `--cache-dir` or the config's `work_dir` (default
/var/cache/pynydusd). Blobs a running daemon uses are never removed, nor those of the images
named with --keep-image. Without --unused-for and --max-size, gc removes every other blob.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict

import rafs
from daemon import cachegc

DEFAULT_WORK_DIR = "/var/cache/pynydusd"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def size(text: str) -> int:
    """Bytes of "500M", "20G", "1048576" (binary units)."""
    m = re.fullmatch(r"(\d+)\s*([kmgt]?)i?b?", text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 20G)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def duration(text: str) -> float:
    """Seconds of "7d", "12h", "30m", "90s", "90"."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 7d, 12h, 30m)")
    return float(m.group(1)) * _SECONDS[m.group(2)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pynydusd-cache", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ls = sub.add_parser("list", help="every cached blob, least recently used first")
    ls.add_argument("work_dir", nargs="?", default=DEFAULT_WORK_DIR)
    ls.add_argument("--json", action="store_true", help="print JSON")
    gc = sub.add_parser("gc", help="remove cached blobs no running daemon uses")
    gc.add_argument("work_dir", nargs="?", default=DEFAULT_WORK_DIR)
    gc.add_argument("--keep-image", action="append", default=[], metavar="BOOTSTRAP",
                    help="keep every blob this image uses (repeatable)")
    gc.add_argument("--unused-for", type=duration, metavar="DURATION",
                    help="remove only blobs unused for this long (7d, 12h, 30m)")
    gc.add_argument("--max-size", type=size, metavar="SIZE",
                    help="remove least recently used blobs until the cache is this small")
    gc.add_argument("--dry-run", action="store_true", help="say what would be removed")
    return p


def human(n: int) -> str:
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _row(b: cachegc.CachedBlob) -> str:
    used = time.strftime("%Y-%m-%d %H:%M", time.localtime(b.last_used)) if b.last_used else "-"
    return (f"{b.blob_id}  {human(b.disk_bytes):>10s}  {b.ready:>8}/{b.chunks:<8} "
            f"{used}  {'in use' if b.in_use else ''}").rstrip()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the pynydusd-cache console script."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except OSError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.work_dir):  # a mistyped path is not an empty cache
        print(f"Error: {args.work_dir} is not a directory", file=sys.stderr)
        return 1
    if args.command == "list":
        blobs = cachegc.scan(args.work_dir)
        if args.json:
            print(json.dumps([asdict(b) for b in blobs], indent=1))
        else:
            print(f"{'blob id':64s}  {'on disk':>10s}  {'ready/chunks':>17s} {'last used':16s}")
            for b in blobs:
                print(_row(b))
            print(f"{len(blobs)} blobs, {human(sum(b.disk_bytes for b in blobs))}")
        return 0
    keep = set()
    for bootstrap in args.keep_image:
        try:
            keep |= {b.blob_id for b in rafs.open_image(bootstrap).blobs}
        except (OSError, rafs.RafsError) as e:
            print(f"Error: cannot read {bootstrap}: {e}", file=sys.stderr)
            return 1
    errors: list[str] = []
    removed = cachegc.collect(args.work_dir, keep, args.unused_for, args.max_size, args.dry_run,
                              errors)
    verb = "would remove" if args.dry_run else "removed"
    for b in removed:
        print(f"{verb} {_row(b)}")
    print(f"{verb} {len(removed)} blobs, {human(sum(b.disk_bytes for b in removed))}")
    for e in errors:
        print(f"Error: cannot remove {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
