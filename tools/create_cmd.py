"""`pynydus-image create`: build a RAFS image from a directory (nydus-image's command line)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import rafs
from rafs.writer.tarsource import scan_tar
from rafs.writer.tree import scan
from rafs.writer.v5 import V5Writer, write_bootstrap
from rafs.writer.v6 import V6Writer


def _chunk_size(text: str) -> int:
    value = int(text, 0)
    if value & (value - 1) or not 0x1000 <= value <= 0x1000000:
        raise argparse.ArgumentTypeError("chunk size must be a power of two in 0x1000..0x1000000")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `pynydus-image create`."""
    parser.add_argument("source", help="source directory, or tar file ('-' = stdin) with --type tar-rafs")
    parser.add_argument("--bootstrap", "-B", required=True, help="where to write the bootstrap")
    parser.add_argument("--blob-dir", "-D", required=True, help="where to write the blob")
    parser.add_argument("--fs-version", "-v", default="6", choices=["5", "6"],
                        help="RAFS version (default 6)")
    parser.add_argument("--compressor", "-c", default="zstd",
                        choices=["none", "lz4_block", "zstd"])
    parser.add_argument("--digester", "-d", default="blake3", choices=["blake3", "sha256"])
    parser.add_argument("--chunk-size", "-S", type=_chunk_size, default=0x100000)
    parser.add_argument("--type", "-t", default="dir-rafs", choices=["dir-rafs", "tar-rafs"],
                        help="SOURCE is a directory (dir-rafs) or a tar file, '-' for stdin (tar-rafs)")
    parser.add_argument("--whiteout-spec", "-W", default="oci", choices=["oci", "overlayfs"],
                        help="keep OCI whiteouts as files (oci) or convert them for overlayfs")
    parser.add_argument("--repeatable", "-R", action="store_true",
                        help="no explicit uid/gid (stored 0), for byte-identical rebuilds")
    parser.add_argument("--output-json", "-J", help="write build facts (blob ids, sizes) here")
    parser.add_argument("--prefetch-policy", "-P", default="none", choices=["none", "fs"],
                        help="fs: read absolute paths to prefetch, one per line, from stdin")


class Progress:
    """A one-line progress bar on stderr (files and bytes packed, rate), at most 5 updates/s."""

    def __init__(self) -> None:
        self.files = self.bytes = 0
        self.start = self.shown = time.monotonic()

    def __call__(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        now = time.monotonic()
        if now - self.shown >= 0.2:
            self.shown = now
            rate = self.bytes / max(now - self.start, 1e-6) / 2**20
            sys.stderr.write(f"\r  packed {self.files} files, {self.bytes / 2**20:.1f} MiB "
                             f"({rate:.0f} MiB/s) ")
            sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    """Run `pynydus-image create`; returns the exit status."""
    spool = tempfile.mkdtemp(prefix=".pynydus-spool-", dir=args.blob_dir if os.path.isdir(
        args.blob_dir) else None)
    try:
        if args.prefetch_policy == "fs" and args.source == "-":
            print("pynydus-image: --prefetch-policy fs reads stdin, so SOURCE cannot be '-'",
                  file=sys.stderr)
            return 1
        if args.type == "tar-rafs":
            tree = scan_tar(args.source, spool, args.whiteout_spec)
        else:
            tree = scan(args.source)
        prefetch = None
        if args.prefetch_policy == "fs":
            prefetch = [line.strip() for line in sys.stdin if line.strip()]
        cls = V6Writer if args.fs_version == "6" else V5Writer
        writer = cls(args.blob_dir, args.compressor, args.digester, args.chunk_size,
                     args.repeatable)
        if sys.stderr.isatty():
            writer.blob.progress = Progress()
        bootstrap, blob_id = writer.build(tree, prefetch)
        try:
            with writer.blob.published():  # the blob this build created goes with a failure
                write_bootstrap(bootstrap, args.bootstrap)
        finally:
            writer.blob.abort()  # (the sealed blob's temporary file, if it was not published)
    except (rafs.RafsError, OSError) as e:
        print(f"pynydus-image: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    facts = {"version": args.fs_version, "bootstrap": args.bootstrap, "blobs": [blob_id] if blob_id else [],
             "chunk_count": writer.blob.count, "compressed_size": writer.blob.c_off,
             "uncompressed_size": writer.blob.d_off}
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(facts, f, indent=1)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(f"wrote {args.bootstrap}; blob {blob_id or '(none: no file data)'} "
          f"({writer.blob.count} chunks)")
    return 0
