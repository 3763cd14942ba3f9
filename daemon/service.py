"""The running daemon: mount, serve FUSE on a trio loop, API socket, prefetch, clean shutdown."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time

log = logging.getLogger("pynydusd")


class Daemon:
    """One mount of one image, from start to a clean exit."""

    def __init__(self, args: argparse.Namespace, config, stop: list[int] | None = None) -> None:
        self.args = args
        self.config = config
        self.api = None
        self.store = None
        self.early = stop if stop is not None else []  # signals seen before run() took over
        self.signalled = False

    def run(self) -> int:
        import rafs

        from .lifecycle import clear_stale_mount, kernel_mount, lazy_unmount, raise_nofile
        from .storage import BlobStore

        args, cfg = self.args, self.config
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._record_signal)
        self.signalled = self.signalled or bool(self.early)  # never undo one that just came
        raise_nofile(getattr(args, "rlimit_nofile", 0))
        _tame_malloc()
        mountpoint = os.path.realpath(args.mountpoint)
        clear_stale_mount(mountpoint, args.apisock)
        if not os.path.isdir(mountpoint):
            raise RuntimeError(f"mountpoint {args.mountpoint} is not a directory")
        log.info("pynydusd %s (nydusd-compatible) starting, pid %d", _version(), os.getpid())
        image = rafs.open_image(args.bootstrap)
        self.store = BlobStore(image, cfg.storage)
        # until trio listens (and after it stops), a SIGTERM/SIGINT is recorded, never fatal:
        # the mount must always be detached on the way out
        if self.signalled:  # asked to stop before anything was mounted
            log.info("stopping before the mount, as asked")
            self.store.close()
            return 0
        fd = kernel_mount(mountpoint)
        log.info("RAFS v%d image %s mounted at %s (%s backend, %s)", image.version, args.bootstrap,
                 mountpoint, cfg.storage.backend_type, _speedup())
        try:
            import pyfuse3
            import trio

            from .fs import RafsOperations

            ops = RafsOperations(image, self.store, enable_xattr=cfg.enable_xattr,
                                 thread_num=args.thread_num, mount_time=time.time())
            pyfuse3.init(ops, f"/dev/fd/{fd}", {"fsname=rafs"})
        except BaseException:
            lazy_unmount(mountpoint)
            raise
        try:
            trio.run(self._serve, ops, mountpoint)
        finally:
            self._shutdown(mountpoint)
        log.info("nydusd quits")
        return 0

    async def _serve(self, ops, mountpoint: str) -> None:
        import pyfuse3
        import trio

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals, nursery)
            nursery.start_soon(self._after_mount, ops, mountpoint)
            await pyfuse3.main()
            log.info("FUSE session ended")
            nursery.cancel_scope.cancel()

    def _record_signal(self, signum: int, _frame) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self.signalled = True

    async def _signals(self, nursery) -> None:
        import pyfuse3
        import trio

        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            if self.signalled:  # arrived while mounting
                pyfuse3.terminate()
                nursery.cancel_scope.cancel()
                return
            async for sig in signals:
                log.info("received %s, shutting down", signal.Signals(sig).name)
                pyfuse3.terminate()
                nursery.cancel_scope.cancel()
                return

    async def _after_mount(self, ops, mountpoint: str) -> None:
        """Things that must not delay the mount: API socket, blob meta, prefetch."""
        import trio

        args = self.args
        if args.apisock:
            from .api import ApiServer, ApiState

            state = ApiState(args.id, args.supervisor, mountpoint, self.config.redacted(), ops,
                             self.store)
            try:
                api = ApiServer(os.path.abspath(args.apisock), state)
                api.start()
                self.api = api
            except OSError as e:  # the mount is worth more than the API: serve on without it
                log.error("cannot listen on the API socket %s: %s", args.apisock, e)
        await trio.to_thread.run_sync(self._background_start, abandon_on_cancel=True)

    def _background_start(self) -> None:
        try:
            self.store.start_prefetch()  # blob meta is loaded when reads are first widened
        except Exception as e:  # never fatal: reads still work
            log.error("background start failed: %s", e)

    def _shutdown(self, mountpoint: str) -> None:
        import pyfuse3

        from .lifecycle import lazy_unmount, mounted_fstype

        try:
            pyfuse3.close(unmount=True)
        except Exception as e:  # already detached (umount -lf) or connection aborted
            log.debug("pyfuse3.close: %s", e)
        if mounted_fstype(mountpoint) and mounted_fstype(mountpoint).startswith("fuse"):
            try:
                lazy_unmount(mountpoint)
            except OSError as e:
                log.warning("%s", e)
        if self.api is not None:
            self.api.stop()
        if self.store is not None:
            self.store.close()


def _version() -> str:
    from .cli import VERSION

    return VERSION


def _speedup() -> str:
    try:
        from rafs import chunkmap

        return f"chunk lookup: {chunkmap.IMPLEMENTATION}"
    except ImportError:
        return "chunk lookup: python"


def _tame_malloc() -> None:
    """Keep the daemon's memory bounded by its caches: chunk buffers (64 KiB and up) always come
    from mmap and go back to the system when freed (glibc otherwise raises its mmap threshold
    after the first free and keeps freed chunk buffers in per-thread arenas)."""
    from .lifecycle import load_libc

    try:
        libc = load_libc()
        libc.mallopt(-3, 64 << 10)  # M_MMAP_THRESHOLD (also stops its dynamic adjustment)
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass

