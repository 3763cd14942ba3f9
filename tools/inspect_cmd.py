"""`pynydus-image inspect`: print an image's tree (ls -lR style or JSON), or verify every chunk."""

from __future__ import annotations

import argparse
import hashlib
import json
import stat
import sys
import time

import rafs
from rafs.localblob import LocalBlobs, walk

_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
          stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `pynydus-image inspect`."""
    parser.add_argument("bootstrap", help="RAFS bootstrap, or a v6 blob with an inlined bootstrap")
    parser.add_argument("--blob-dir", help="directory holding the blobs, named by blob id")
    parser.add_argument("--verify", action="store_true",
                        help="read, decompress and digest-check every chunk (needs --blob-dir)")
    parser.add_argument("--json", action="store_true", help="print a JSON manifest")


def _fsdecode(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")


def _entry(image: rafs.Image, path: bytes, inode: rafs.Inode, blobs: LocalBlobs | None) -> dict:
    e = {"path": _fsdecode(path), "type": _TYPES.get(stat.S_IFMT(inode.mode), "unknown"),
         "mode": stat.S_IMODE(inode.mode), "uid": inode.uid, "gid": inode.gid, "size": inode.size,
         "nlink": inode.nlink, "symlink": None, "rdev": inode.rdev, "mtime": inode.mtime,
         "ino": inode.ino,
         "xattrs": {_fsdecode(k): v.hex() for k, v in sorted(image.xattrs(inode.ino).items())}}
    if inode.is_symlink:
        e["symlink"] = _fsdecode(image.readlink(inode.ino))
    if blobs is not None and inode.is_reg:
        e["sha256"] = hashlib.sha256(blobs.read_file(inode.ino, verify=False)).hexdigest()
    return e


def _ls_line(image: rafs.Image, path: bytes, inode: rafs.Inode) -> str:
    size = f"{inode.rdev >> 8 & 0xfff}, {inode.rdev & 0xff | inode.rdev >> 12 & 0xfff00}" \
        if stat.S_ISCHR(inode.mode) or stat.S_ISBLK(inode.mode) else str(inode.size)
    try:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(inode.mtime))
    except (OverflowError, OSError, ValueError):  # beyond what the C library's calendar holds
        when = f"@{inode.mtime}"
    line = (f"{stat.filemode(inode.mode)} {inode.nlink:>3} {inode.uid:>5} {inode.gid:>5} "
            f"{size:>10} {when} {_fsdecode(path)}")
    if inode.is_symlink:
        line += " -> " + _fsdecode(image.readlink(inode.ino))
    return line


def _verify(image: rafs.Image, blobs: LocalBlobs) -> int:
    files = chunks = 0
    for path, inode in walk(image):
        if not inode.is_reg:
            continue
        files += 1
        for chunk in image.file_chunks(inode.ino):
            try:
                blobs.chunk_data(chunk, verify=True)
            except rafs.RafsError as e:
                print(f"pynydus-image: verify failed: {_fsdecode(path)}: chunk {chunk.chunk_index} "
                      f"of blob {image.blobs[chunk.blob_index].blob_id}: {e}", file=sys.stderr)
                return 1
            chunks += 1
    print(f"verified {chunks} chunks of {files} files")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run `pynydus-image inspect`; returns the exit status."""
    if args.verify and not args.blob_dir:
        print("pynydus-image: --verify needs --blob-dir", file=sys.stderr)
        return 1
    try:
        image = rafs.open_image(args.bootstrap)
        blobs = LocalBlobs(image, args.blob_dir) if args.blob_dir else None
        if args.verify:
            return _verify(image, blobs)
        if args.json:
            json.dump([_entry(image, p, i, blobs) for p, i in walk(image)], sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            for path, inode in walk(image):
                print(_ls_line(image, path, inode))
    except BrokenPipeError:
        sys.stdout = None  # the reader went away (| head): not an error
        return 0
    except (rafs.RafsError, OSError) as e:
        print(f"pynydus-image: {args.bootstrap}: {e}", file=sys.stderr)
        return 1
    return 0
