"""The running daemon: mount, serve FUSE on a trio loop, API socket, prefetch, clean shutdown."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time

from .cli import naming

log = logging.getLogger("pynydusd")


class StateError(Exception):
    """An API call that the daemon's state does not allow (HTTP 400, as nydusd)."""


class NotReady(Exception):
    """An API call that must wait for the daemon (HTTP 503)."""


DRAIN_S = 10.0  # `exit`: how long requests being served may take to finish


class Daemon:
    """One mount of one image, from start to a clean exit."""

    def __init__(self, args: argparse.Namespace, config, stop: list[int] | None = None) -> None:
        self.args = args
        self.config = config
        self.api = None
        self.store = None
        self.early = stop if stop is not None else []  # signals seen before run() took over
        self.signalled = False
        self.image = None
        self.ops = None
        self.mountpoint = ""
        self.phase = "INIT"  # nydusd's states: INIT, READY, RUNNING (then STOPPED)
        self.kernel_fd: int | None = None  # our own copy of the /dev/fuse fd, for sendfd
        self.conn_id: int | None = None  # the FUSE connection id of the mount
        self.adoption = None  # after a takeover
        self.handed = False  # sendfd done: a supervisor holds the connection too
        self.restarted = False  # waiting for a takeover without --upgrade (an unserved mount)
        self.keep_mount = False  # `exit`: leave the mount for the next daemon
        self.failure: Exception | None = None  # why serving stopped, when startup failed late
        self.trio_token = None
        self.nursery = None
        self._lock = threading.Lock()
        self._go = threading.Event()
        self._loop_done = threading.Event()
        self._answered = threading.Event()

    def run(self) -> int:
        import rafs

        from .lifecycle import (
            MountNotAnswering,
            canonical_mountpoint,
            clear_stale_mount,
            kernel_mount,
            lazy_unmount,
            mount_conn_id,
            mounted_fstype,
            raise_nofile,
            set_readahead,
        )
        from .storage import BlobStore

        args, cfg = self.args, self.config
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._record_signal)
        self.signalled = self.signalled or bool(self.early)  # never undo one that just came
        raise_nofile(getattr(args, "rlimit_nofile", 0))
        _tame_malloc()
        with naming(f"mountpoint {args.mountpoint}"):
            mountpoint = self.mountpoint = canonical_mountpoint(args.mountpoint)
        if not getattr(args, "upgrade", False):
            try:
                with naming(f"mountpoint {args.mountpoint}"):
                    clear_stale_mount(mountpoint, args.apisock)
            except MountNotAnswering:
                # a connection nobody serves while a supervisor's socket is there: its fd is kept
                # for a takeover (nydusd-contract 6.5/6.6), so wait for one instead of failing.
                # (No test connection: a supervisor could take it for a daemon's.)
                if not (args.supervisor and args.apisock and _is_socket(args.supervisor)):
                    raise
                log.warning("%s holds a FUSE connection nobody serves and the supervisor %s "
                            "listens: waiting for a takeover", mountpoint, args.supervisor)
                args.upgrade = self.restarted = True
        if mounted_fstype(mountpoint) is None and not os.path.isdir(mountpoint):
            raise RuntimeError(f"mountpoint {args.mountpoint} is not a directory")
        log.info("pynydusd %s (nydusd-compatible) starting, pid %d", _version(), os.getpid())
        with naming(f"bootstrap {args.bootstrap}"):
            image = self.image = rafs.open_image(args.bootstrap)
        if getattr(args, "upgrade", False):  # storage opens at takeover, after the old daemon's
            return self._run_upgrade()
        st = cfg.storage
        with naming(f"cache work_dir {st.work_dir}" if st.cache_type else
                    f"{st.backend_type} backend"):
            self.store = BlobStore(image, st)
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

            ops = self._operations()
            conn_id = mount_conn_id(mountpoint)
            if conn_id is not None and getattr(args, "readahead_kb", 0):
                threading.Thread(target=set_readahead, daemon=True, name="readahead",
                                 args=(conn_id, args.readahead_kb, ops.init_done)).start()
            if args.supervisor:  # a copy of our own, for sendfd (libfuse closes `fd`)
                self.kernel_fd = os.dup(fd)
                self.conn_id = conn_id
            pyfuse3.init(ops, f"/dev/fd/{fd}", {"fsname=rafs"})
        except BaseException:
            lazy_unmount(mountpoint)
            raise
        return self._run_session(ops)

    def _operations(self, on_init=None):
        from .filestats import FileStats
        from .fs import RafsOperations

        c = self.config
        return RafsOperations(self.image, self.store, enable_xattr=c.enable_xattr,
                              thread_num=self.args.thread_num, mount_time=time.time(),
                              on_init=on_init, file_stats=FileStats(
                                  c.iostats_files, c.access_pattern, c.latest_read_files))

    def _run_session(self, ops) -> int:
        import trio

        self.ops = ops
        self.phase = "RUNNING"
        if self.api is not None:
            self.api.server.state.ops = ops
            self.api.server.state.state = "RUNNING"
        try:
            trio.run(self._serve, ops, self.mountpoint)
        finally:
            self._loop_done.set()
            self._shutdown(self.mountpoint)
        if self.failure is not None:
            raise self.failure
        log.info("nydusd quits")
        return 0

    # -- hot upgrade and failover (nydusd-contract 6.6; the mechanics are in handover) --------

    def _run_upgrade(self) -> int:
        """--upgrade: mount nothing; serve the API in state INIT until a takeover brings the FUSE
        connection of the previous daemon and `start` asks to serve it."""
        from .api import ApiServer, ApiState

        args = self.args
        state = ApiState(args.id, args.supervisor, self.mountpoint, self.config.redacted(), None,
                         None, control=self, config_id=self.config.id)
        state.state = "INIT"
        self.api = ApiServer(os.path.abspath(args.apisock), state)
        self.api.start()
        import pyfuse3  # noqa: F401 - now, not during the takeover: reads wait for it
        import trio  # noqa: F401
        log.info("waiting for a takeover from the supervisor %s", args.supervisor)
        while True:
            self._go.wait(0.1)
            with self._lock:
                phase = self.phase
                if self.signalled:  # a signal or `exit` before serving
                    self.phase = "STOPPED"
                    break
            if phase == "STARTING":
                return self._run_session(self.ops)
        log.info("stopping before serving, as asked")
        if phase in ("READY", "STARTING"):  # a session was prepared on the connection
            self.adoption.release()
            self._shutdown(self.mountpoint)  # unmounts, unless `exit` keeps the mount
        else:
            if self.keep_mount:
                self._answered.wait(2.0)  # let the API answer `exit` first
            self.api.stop()
        return 0

    def takeover(self) -> None:
        """API `takeover` (INIT -> READY): receive the FUSE fd and record from the supervisor,
        check they are this mount's, open storage and prepare a session on the connection."""
        from . import handover
        from .lifecycle import mount_conn_id

        with self._lock:
            if self.phase != "INIT":
                raise StateError(f"takeover is valid in state INIT, not {self.phase}")
            self.phase = "TAKING"  # the exchange runs unlocked: signals and exit stay served
        try:
            state, fd = handover.receive_fd(self.args.supervisor)
            try:
                conn_id = handover.check_state(state, fd, self.mountpoint,
                                               mount_conn_id(self.mountpoint), self.args.bootstrap,
                                               self.image.file_id, sender_gone=self.restarted)
                self._adopt(fd)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            with self._lock:
                if self.phase == "TAKING":
                    self.phase = "INIT"
            raise
        with self._lock:
            self.conn_id = conn_id
            if self.phase == "TAKING":
                self.phase = self.api.server.state.state = "READY"
        log.info("took over FUSE connection %d at %s from pid %s", conn_id, self.mountpoint,
                 state.get("pid"))

    def _adopt(self, fd: int) -> None:
        """Storage, operations and a libfuse session for the kernel connection `fd` (the
        adoption's from here on; the caller's to close if this fails)."""
        import pyfuse3

        from . import handover
        from .storage import BlobStore

        # the cache as the old daemon left it (it has exited, in a hot upgrade)
        store = BlobStore(self.image, self.config.storage)
        adoption = kernel_fd = None
        try:
            kernel_fd = os.dup(fd)
            adoption = handover.Adoption(fd)
            self.store = store
            ops = self._operations(on_init=adoption.swap)
            try:
                pyfuse3.init(ops, adoption.session_path, {"fsname=rafs"})  # owns session_fd now
            except BaseException:
                os.close(adoption.session_fd)
                raise
            adoption.feed_init()
        except BaseException:
            if adoption is not None:
                adoption.abandon()
            if kernel_fd is not None:
                os.close(kernel_fd)
            self.store = None
            store.close()
            raise
        self.api.server.state.store = store
        self.ops, self.adoption, self.kernel_fd = ops, adoption, kernel_fd

    def start(self) -> None:
        """API `start` (READY -> RUNNING): re-drive what the old daemon left unanswered (a
        crash), then serve the connection taken over."""
        from . import handover

        with self._lock:
            if self.phase != "READY":
                raise StateError(f"start is valid in state READY, not {self.phase}")
            self.phase = "STARTING"
            done = handover.redrive(self.kernel_fd, self.conn_id, self.args.failover_policy)
        log.info("starting on the connection taken over (re-drive: %s)", done)
        self._go.set()

    def sendfd(self) -> None:
        """API `sendfd`: give the supervisor a copy of this daemon's FUSE fd and its record (the
        daemon serves on; the connection now outlives this process)."""
        from . import handover

        if self.adoption is None and self.ops is not None:
            self.ops.init_done.wait(2.0)  # INIT takes milliseconds after the mount
        with self._lock:
            if self.phase not in ("RUNNING", "READY", "STARTING") or self.kernel_fd is None:
                raise StateError(f"sendfd needs a FUSE session, and the state is {self.phase}")
            if self.adoption is None and not self.ops.initialized:
                raise NotReady("the kernel has not finished FUSE INIT yet")
            if self.conn_id is None:
                raise handover.HandoverError(f"no FUSE mount found at {self.mountpoint}")
            state = handover.make_state(self.mountpoint, self.args.bootstrap,
                                        self.image.file_id, self.conn_id)
            self.handed = True  # before: if the send fails half-way, the supervisor may have it
            handover.send_fd(self.args.supervisor, state, self.kernel_fd)
        log.info("sent the FUSE fd of %s to the supervisor %s", self.mountpoint,
                 self.args.supervisor)

    def check_exit(self) -> None:
        """Refuse an `exit` that would strand the mount: no supervisor holds its connection."""
        with self._lock:
            if self.phase not in ("INIT", "STOPPED") and not (self.handed or self.adoption):
                raise StateError("exit keeps the mount for a next daemon, but no supervisor "
                                 "holds its connection: call sendfd first (or stop with SIGTERM)")

    def exit(self) -> None:
        """API `exit`: stop reading requests, let those being served finish (DRAIN_S at most),
        and quit **without** unmounting (hot upgrade's last step of the old daemon). Requests
        not yet read wait in the kernel for the next daemon. Returns once reading has stopped."""
        log.info("exit requested over the API: stopping without unmounting")
        with self._lock:
            self.keep_mount = True
            self.signalled = True
            token = self.trio_token
        self._go.set()
        if token is not None:
            import trio

            try:
                trio.from_thread.run_sync(self._drain, trio_token=token)
            except trio.RunFinishedError:
                pass
            self._loop_done.wait(DRAIN_S + 1)

    def exit_answered(self) -> None:
        """The API has answered `exit`: the process may go."""
        self._answered.set()

    def _drain(self) -> None:
        import pyfuse3

        pyfuse3.terminate()  # no more reads; pyfuse3.main returns once handlers finish
        if self.nursery is not None:
            self.nursery.start_soon(self._cancel_after, DRAIN_S)

    async def _cancel_after(self, seconds: float) -> None:
        import trio

        await trio.sleep(seconds)
        log.warning("requests still served after %.0f s: abandoned", seconds)
        self.nursery.cancel_scope.cancel()

    async def _watch_adoption(self, ops) -> None:
        """After a takeover: the kernel connection must have replaced the socket pair when the
        synthetic INIT was handled; if not, stop (the supervisor still holds the connection)."""
        import trio

        with trio.move_on_after(5):
            while not ops.initialized:
                await trio.sleep(0.01)
        if not self.adoption.swapped:
            log.error("the FUSE connection taken over could not be adopted: stopping, the mount "
                      "stays for another daemon")
            self.keep_mount = True
            self._drain()

    async def _serve(self, ops, mountpoint: str) -> None:
        import pyfuse3
        import trio

        async with trio.open_nursery() as nursery:
            with self._lock:
                self.trio_token, self.nursery = trio.lowlevel.current_trio_token(), nursery
                leaving = self.keep_mount  # `exit` came before the loop ran
            if leaving:
                self._drain()
            if self.adoption is not None:
                nursery.start_soon(self._watch_adoption, ops)
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
        import pyfuse3
        import trio

        args = self.args
        if args.apisock and self.api is None:
            from .api import ApiServer, ApiState
            from .lifecycle import SocketError

            state = ApiState(args.id, args.supervisor, mountpoint, self.config.redacted(), ops,
                             self.store, control=self, config_id=self.config.id)
            try:
                api = ApiServer(os.path.abspath(args.apisock), state)
            except SocketError as e:  # nydusd exits 1 (unmounting): so do we
                log.error("%s: stopping", e)
                self.failure = e
                pyfuse3.terminate()
                return
            api.start()
            self.api = api
        await trio.to_thread.run_sync(self._background_start, abandon_on_cancel=True)

    def _background_start(self) -> None:
        try:
            self.store.start_prefetch()  # blob meta is loaded when reads are first widened
        except Exception as e:  # never fatal: reads still work
            log.error("background start failed: %s", e)

    def _shutdown(self, mountpoint: str, session: bool = True) -> None:
        """Close the FUSE session and detach the mount (kept after `exit`: a new daemon serves
        it), stop the API, close storage. When a supervisor holds the connection too, it is
        aborted: nobody would serve it."""
        import pyfuse3

        from .lifecycle import abort_connection, lazy_unmount, mount_entry

        with self._lock:  # no sendfd from here on
            self.phase = "STOPPED"
            shared = self.handed or self.adoption is not None
            kernel_fd, self.kernel_fd = self.kernel_fd, None
        if session:
            try:
                pyfuse3.close(unmount=not self.keep_mount)
            except Exception as e:  # already detached (umount -lf) or connection aborted
                log.debug("pyfuse3.close: %s", e)
        if self.keep_mount:
            log.info("the mount at %s stays for the next daemon", mountpoint)
            self._answered.wait(2.0)  # let the API answer `exit` before the process goes
        else:
            entry = mount_entry(mountpoint)
            ours = entry is not None and entry[0].startswith("fuse") and (
                self.conn_id is None or entry[1] == self.conn_id)
            if ours:
                try:
                    lazy_unmount(mountpoint, force=shared)  # MNT_FORCE aborts the connection
                except OSError as e:
                    log.warning("%s", e)
            elif shared and self.conn_id is not None and not abort_connection(self.conn_id):
                # detached already, but alive at the supervisor (held open by an overlay, say)
                log.warning("cannot abort FUSE connection %d: readers wait until the supervisor "
                            "drops it", self.conn_id)
        if kernel_fd is not None:  # last: while we hold it, conn_id names no other connection
            os.close(kernel_fd)
        if self.api is not None:
            self.api.stop()
        if self.store is not None:
            self.store.close()


def _is_socket(path: str) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _version() -> str:
    from .buildinfo import VERSION

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

