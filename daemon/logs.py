"""nydusd-style log lines on stderr: `[2025-08-31 22:19:04.095793 +00:00] INFO message`."""

from __future__ import annotations

import collections
import email.utils
import gzip
import logging
import logging.handlers
import os
import shutil
import sys
import threading
import time

TRACE = 5  # below DEBUG: --log-level trace (one line per FUSE request)
LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "error": logging.ERROR, "off": logging.CRITICAL + 10}
logging.addLevelName(TRACE, "TRACE")


class NydusFormatter(logging.Formatter):
    """INFO lines carry time and level; other levels add `[file:line]` as nydusd does."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        tz = time.strftime("%z", t)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", t) + f".{int(record.created % 1 * 1e6):06d}"
        level = {"WARNING": "WARN", "CRITICAL": "ERROR"}.get(record.levelname, record.levelname)
        where = "" if record.levelno == logging.INFO else f" [{record.module}.py:{record.lineno}]"
        msg = f"[{stamp} {tz[:3]}:{tz[3:]}] {level}{where} {record.getMessage()}"
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return msg


class ErrorRing(logging.Handler):
    """The latest ERROR records, for nydusd's `GET /api/v1/daemon/events`: at most MAX_ERRORS
    entries and MAX_SIZE bytes of `<HTTP-date> - <text>` lines, oldest dropped first."""

    MAX_ERRORS, MAX_SIZE = 500, 51200

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.entries: collections.deque[str] = collections.deque()
        self.size = self.total = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{email.utils.formatdate(record.created, usegmt=True)} - {record.getMessage()}"
        except Exception:  # a record whose message cannot be formatted
            text = f"{email.utils.formatdate(record.created, usegmt=True)} - {record.msg!r}"
        text = text[:self.MAX_SIZE]
        with self.lock:
            self.entries.append(text)
            self.size += len(text)
            self.total += 1
            while len(self.entries) > self.MAX_ERRORS or self.size > self.MAX_SIZE:
                self.size -= len(self.entries.popleft())

    def snapshot(self) -> dict:
        with self.lock:
            return {"max_errors": self.MAX_ERRORS, "total_errors": self.total,
                    "max_size": self.MAX_SIZE, "total_size": self.size,
                    "errors": list(self.entries)}


ERRORS = ErrorRing()


class RotatingLog(logging.handlers.RotatingFileHandler):
    """nydusd's --log-rotation-size: once the file reaches the size, it is renamed with a
    timestamp in its name and gzip-compressed (in a thread of its own, so that no logging call
    waits for it), and only the KEEP newest rotated files are kept."""

    KEEP = 10

    def __init__(self, path: str, max_bytes: int) -> None:
        super().__init__(path, mode="a", maxBytes=max_bytes, backupCount=0, delay=False)
        self.compressing = threading.Lock()

    def doRollover(self) -> None:  # noqa: N802 - logging's name
        if self.stream:
            self.stream.close()
            self.stream = None  # type: ignore[assignment]
        stem, ext = os.path.splitext(self.baseFilename)
        while True:  # names sort in the order of rotations
            now = time.time()
            rotated = (f"{stem}_r{time.strftime('%Y-%m-%d_%H-%M-%S', time.localtime(now))}"
                       f"-{int(now % 1 * 1e6):06d}{ext}")
            if not (os.path.exists(rotated) or os.path.exists(rotated + ".gz")):
                break
            time.sleep(1e-6)
        try:
            os.rename(self.baseFilename, rotated)
        except OSError:
            rotated = ""
        self.stream = self._open()
        if rotated:
            threading.Thread(target=self._compress, args=(rotated, stem, ext), daemon=True,
                             name="log-rotation").start()

    def _compress(self, rotated: str, stem: str, ext: str) -> None:
        with self.compressing:
            try:
                with open(rotated, "rb") as src, gzip.open(rotated + ".gz", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.unlink(rotated)
            except OSError:
                return
            prefix = os.path.basename(stem) + "_r"
            folder = os.path.dirname(self.baseFilename)
            old = sorted(e.path for e in os.scandir(folder)
                         if e.name.startswith(prefix) and e.name.endswith(ext + ".gz"))
            for path in old[:-self.KEEP]:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def setup(level: str = "info", log_file: str | None = None, rotation_mib: int = 0) -> None:
    """Send all logs to stderr (or a file, in append mode, rotated at `rotation_mib` MiB when
    that is set) at `level`."""
    if log_file:
        if "." not in log_file.rsplit("/", 1)[-1]:
            log_file += ".log"
        h: logging.Handler = (RotatingLog(log_file, rotation_mib << 20) if rotation_mib > 0
                              else logging.FileHandler(log_file, mode="a"))
    else:
        h = logging.StreamHandler(sys.stderr)
    h.setFormatter(NydusFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h, ERRORS]
    set_level(level)


def set_level(level: str) -> None:
    """Change the log level at run time (nydusd's level names, case-insensitive)."""
    value = LEVELS.get(level.lower())
    if value is None:
        raise ValueError(f"invalid log level {level!r}")
    logging.getLogger().setLevel(value)
    # third-party chatter (urllib3, trio) only at trace level
    for name in ("urllib3", "trio", "pyfuse3"):
        logging.getLogger(name).setLevel(max(value, logging.INFO if value <= 5 else logging.WARNING))
