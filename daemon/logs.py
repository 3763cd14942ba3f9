"""nydusd-style log lines on stderr: `[2025-08-31 22:19:04.095793 +00:00] INFO message`."""

from __future__ import annotations

import collections
import email.utils
import logging
import sys
import time

LEVELS = {"trace": 5, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "error": logging.ERROR, "off": logging.CRITICAL + 10}
logging.addLevelName(5, "TRACE")


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


def setup(level: str = "info", log_file: str | None = None) -> None:
    """Send all logs to stderr (or a file, in append mode) at `level`."""
    if log_file:
        if "." not in log_file.rsplit("/", 1)[-1]:
            log_file += ".log"
        h: logging.Handler = logging.FileHandler(log_file, mode="a")
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
