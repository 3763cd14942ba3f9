"""`pynydusd` (and `nydusd` drop-in) command line: parse, mount first, then serve.

    pynydusd --bootstrap META --backend URL MOUNTPOINT
    nydusd --thread-num 10 --log-level debug --mountpoint DIR --apisock SOCK --id sealer \\
           --bootstrap rootfs.meta --config httpserver.json --supervisor SOCK

Start-up order keeps the mount well inside 0.5 s of exec: arguments and config, the bootstrap
(lazily, mmap), the FUSE mount; then the API socket, blob-meta loading and background prefetch.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator


class _Version(argparse.Action):
    """-V: the version block, put together only when asked for."""

    def __call__(self, parser, namespace, values, option_string=None):
        from .buildinfo import version_text

        print(version_text(parser.prog))  # (on stdout, as argparse's own version action)
        parser.exit()


class StartupError(RuntimeError):
    """Startup failed for a reason the message names (exit 1, as nydusd's `Error: ...`)."""


@contextlib.contextmanager
def naming(what: str) -> Iterator[None]:
    """File-system and image errors inside say which input failed (`what`, e.g. "bootstrap
    PATH"). A backend's own errors (no file name) already say what they are about."""
    import rafs

    try:
        yield
    except OSError as e:
        if e.filename is None and e.strerror is None:
            raise
        raise StartupError(f"{what}: {e.strerror or e}") from None
    except rafs.RafsError as e:
        raise StartupError(f"{what}: {e}") from None
READAHEAD_KB = 4096  # sequential reads come in 1 MiB requests, several in flight (kernel: 128)
log = logging.getLogger("pynydusd")


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The argument parser: pynydusd's own options plus nydusd's fusedev surface."""
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Mount a nydus RAFS v5/v6 image with FUSE, pulling file data lazily.",
        epilog="examples:\n"
               "  pynydusd --bootstrap rootfs.meta --backend http://127.0.0.1:8000/sealer /mnt/rootfs\n"
               "  pynydusd --bootstrap rootfs.meta --backend ./blobs /mnt/rootfs\n"
               "  nydusd --mountpoint DIR --bootstrap rootfs.meta --config httpserver.json\n"
               "Stop with SIGTERM or Ctrl-C: the mount is detached and the daemon exits 0.")
    p.add_argument("mountpoint_pos", nargs="?", metavar="MOUNTPOINT", help="where to mount")
    p.add_argument("-M", "--mountpoint", help="where to mount (nydusd spelling)")
    p.add_argument("-B", "--bootstrap", help="RAFS bootstrap (metadata) file")
    p.add_argument("--backend", metavar="URL",
                   help="blobs: http[s]://host[:port]/REPO (registry or blob server) or a local directory")
    p.add_argument("-C", "--config", help="nydusd config file (v1 JSON, v2 TOML or JSON)")
    p.add_argument("-D", "--localfs-dir", help="blob directory; also the cache directory (nydusd)")
    p.add_argument("--cache-dir", help="chunk cache directory (default /var/cache/pynydusd as root)")
    p.add_argument("--prefetch", dest="prefetch", action="store_true", default=None,
                   help="pull the whole image in the background (the default with --backend)")
    p.add_argument("--no-prefetch", dest="prefetch", action="store_false",
                   help="fetch data only when it is read")
    p.add_argument("--thread-num", "--fuse-threads", "-T", dest="thread_num", type=int, default=4,
                   help="worker threads for blocking work (1..1024, default 4)")
    p.add_argument("-l", "--log-level", default="info",
                   choices=["trace", "debug", "info", "warn", "error"])
    p.add_argument("-L", "--log-file", help="log to this file instead of stderr")
    p.add_argument("--log-rotation-size", type=int, default=0, metavar="MIB",
                   help="rotate --log-file at this size; the 10 newest rotated files are kept, "
                        "gzip-compressed (default 0: no rotation)")
    p.add_argument("-A", "--apisock", help="Unix socket for the HTTP API")
    p.add_argument("--id", help="daemon id (needs --supervisor)")
    p.add_argument("-S", "--supervisor",
                   help="supervisor socket for hot upgrade and failover (API sendfd/takeover)")
    p.add_argument("--prefetch-files", help="file listing absolute paths to prefetch first")
    p.add_argument("-m", "--virtual-mountpoint", default="/", help="only / is supported")
    p.add_argument("-U", "--upgrade", action="store_true",
                   help="mount nothing: wait for PUT /api/v1/daemon/fuse/takeover, then start")
    p.add_argument("--readahead-kb", type=int, default=READAHEAD_KB, metavar="KB",
                   help=f"the kernel's readahead window for the mount (default {READAHEAD_KB}; "
                        "0 keeps the kernel's 128)")
    p.add_argument("--failover-policy", choices=["resend", "flush", "none"], default="resend")
    p.add_argument("--writable", action="store_true", help="not supported: the mount is read-only")
    p.add_argument("--rlimit-nofile", type=int, default=1_000_000,
                   help="raise RLIMIT_NOFILE (soft and hard) to this, as nydusd does; 0: leave it")
    p.add_argument("-s", "--shared-dir", help="not supported (passthrough)")
    p.add_argument("-V", "--version", action=_Version, nargs=0, help="print the build and exit")
    return p


def parse_args(argv: list[str], prog: str) -> argparse.Namespace:
    """Parse and cross-check arguments; bad ones exit 2 with usage."""
    if argv and argv[0] == "fuse":
        argv = argv[1:]
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    args.mountpoint = args.mountpoint or args.mountpoint_pos
    if args.mountpoint_pos and args.mountpoint and args.mountpoint_pos != args.mountpoint:
        parser.error("give the mountpoint once")
    if not args.mountpoint:
        parser.error("a mountpoint is required (MOUNTPOINT or --mountpoint)")
    if not args.bootstrap:
        parser.error("--bootstrap is required")
    if not 1 <= args.thread_num <= 1024:
        parser.error("--thread-num must be in 1..1024")
    if bool(args.id) != bool(args.supervisor):
        parser.error("--id and --supervisor must be given together")
    sources = [x for x in (args.config, args.backend, args.localfs_dir) if x]
    if len(sources) != 1:
        parser.error("give exactly one of --config, --backend, --localfs-dir")
    if args.upgrade and not (args.apisock and args.supervisor):
        parser.error("--upgrade needs --apisock and --supervisor (the takeover comes over both)")
    for flag, bad in (("--shared-dir", args.shared_dir), ("--writable", args.writable)):
        if bad:
            parser.error(f"{flag} is not supported by pynydusd")
    if args.virtual_mountpoint != "/":
        parser.error("--virtual-mountpoint: only / is supported")
    return args


def backend_config(url: str):
    """A DaemonConfig for `--backend URL` (registry URL or local blob directory)."""
    import urllib.parse

    from .backends import no_userinfo
    from .config import DaemonConfig
    from .storage import StorageOptions

    u = urllib.parse.urlsplit(url)
    if u.scheme in ("http", "https"):
        repo = u.path.strip("/")
        if not u.netloc or not repo:
            raise ValueError(f"backend URL {no_userinfo(url)!r} needs a host and a repository path")
        cfg = {"scheme": u.scheme, "host": u.netloc.rpartition("@")[2], "repo": repo}
        if u.username is not None:  # https://user:password@host/repo: basic auth, kept off URLs
            creds = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
            cfg["auth"] = base64.b64encode(creds.encode()).decode()
        opts = StorageOptions("registry", cfg)
    else:
        if not os.path.isdir(url):
            raise ValueError(f"backend {url!r} is neither an http(s) URL nor a directory")
        opts = StorageOptions("localfs", {"dir": os.path.abspath(url)})
    opts.prefetch_enable = True
    return DaemonConfig("", opts)  # xattrs when the image has them: ENOSYS (cached) otherwise


def make_config(args: argparse.Namespace):
    """The effective DaemonConfig from --config / --backend / --localfs-dir and the CLI flags."""
    from .config import load_config

    if args.config:
        cfg = load_config(args.config)
        pull_auth = os.environ.get("IMAGE_PULL_AUTH")
        if pull_auth and cfg.storage.backend_type == "registry":  # credentials kept off disk
            from .backends import basic_auth_header

            basic_auth_header(pull_auth, "IMAGE_PULL_AUTH")  # (a bad one named as such)
            cfg.storage.backend_config["auth"] = pull_auth
    elif args.backend:
        cfg = backend_config(args.backend)
    else:
        cfg = backend_config(args.localfs_dir)
        cfg.storage.work_dir = os.path.abspath(args.localfs_dir)
        cfg.storage.prefetch_enable = False
    s = cfg.storage
    if args.backend and s.backend_type == "localfs" and not args.cache_dir:
        s.cache_type = ""  # the blobs are on a local disk already: no second copy by default
    if args.cache_dir:
        s.work_dir = os.path.abspath(args.cache_dir)
    elif args.backend:
        s.work_dir = "/var/cache/pynydusd" if os.geteuid() == 0 else os.path.expanduser(
            "~/.cache/pynydusd")
    if args.prefetch is not None:
        s.prefetch_enable = args.prefetch
    s.thread_num = args.thread_num
    if args.prefetch_files:
        with naming(f"--prefetch-files {args.prefetch_files}"), \
                open(args.prefetch_files, encoding="utf-8") as f:
            s.prefetch_files = [line.strip() for line in f if line.strip()]
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Entry point of `pynydusd` and of the `nydusd` drop-in."""
    # first of all: a SIGTERM/SIGINT from here on is a request to stop, never a crash
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    prog = os.path.basename(sys.argv[0]) or "pynydusd"
    args = parse_args(sys.argv[1:] if argv is None else argv, prog)
    try:
        from . import logs

        with naming(f"--log-file {args.log_file}"):
            logs.setup(args.log_level, args.log_file, args.log_rotation_size)
        from .service import Daemon

        daemon = Daemon(args, make_config(args), stop)
        return daemon.run()
    except Exception as e:  # startup failure: one clear line, exit 1 (nydusd prints Error: ...)
        log.debug("startup failed", exc_info=True)
        while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
            e = e.exceptions[0]  # say what failed, not "Exceptions from Trio nursery"
        print(f"Error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
