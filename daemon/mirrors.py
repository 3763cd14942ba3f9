"""Registry mirrors (nydusd 2.1-2.3's `mirrors`, which later releases dropped and ignore).

Each mirror is tried, in the configured order, before the registry itself: the same path on the
mirror's scheme, host and port, with the mirror's extra headers. A mirror whose failures (no
connection, a timeout, a 5xx or a bad body, in a row; answers whose bytes failed their digest, in
all) reach `failure_limit` is left out until its
health URL (`ping_url`, else `<host>/v2`) answers below 500, asked every `health_check_interval`
seconds by a thread that runs only while the mirror is out. A mirror that answers but cannot serve
the range (a 4xx, or a whole blob for a ranged GET, as a pull-through cache does for a blob it is
still fetching) is not failing: the read goes on to the next mirror or the registry.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from dataclasses import dataclass, field

from .backends import no_userinfo, url_for_log

log = logging.getLogger(__name__)

DEFAULT_CHECK_S = 5.0
DEFAULT_FAILURE_LIMIT = 5
MIN_CHECK_S = 0.05  # a health check interval of 0 would spin
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)
# headers the client itself must set: a mirror's copy would break or change the request
RESERVED = {"range", "host", "content-length", "transfer-encoding", "connection"}


class MirrorConfigError(ValueError):
    """A `mirrors` entry that cannot be used; the message names it."""


@dataclass
class Mirror:
    """One mirror and its health. Thread-safe."""

    host: str  # scheme://host[:port] (a path in the configured host is ignored, as upstream does)
    headers: dict[str, str]
    ping_url: str
    check_s: float = DEFAULT_CHECK_S
    failure_limit: int = DEFAULT_FAILURE_LIMIT
    failures: int = 0  # in a row
    bad: int = 0  # answers whose bytes failed their digest, since the mirror was last out
    healthy: bool = True
    misses: set = field(default_factory=set)  # answers already logged as "cannot serve"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, url: str) -> str:
        """`url` on this mirror: its scheme, host and port, the same path and query."""
        m = urllib.parse.urlsplit(self.host)
        return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(
            scheme=m.scheme, netloc=m.netloc))

    def name(self) -> str:
        return no_userinfo(self.host)

    def succeeded(self) -> None:
        if self.failures:
            with self.lock:
                self.failures = 0

    def missed(self, why: str) -> None:
        """The mirror answered but cannot serve this read (logged once per kind of answer)."""
        with self.lock:
            if why in self.misses or len(self.misses) > 16:
                return
            self.misses.add(why)
        log.info("mirror %s cannot serve a read (%s): reading from the next mirror or the "
                 "registry (said once per kind of answer)", self.name(), why)

    def failed(self, error: Exception, ping, bad_data: bool = False) -> None:
        """A failed request (`bad_data`: an answer whose bytes failed their digest, which a
        later good answer does not wipe out); at failure_limit the mirror is left out and
        `ping(self)` runs in a thread until the mirror is back."""
        with self.lock:
            if bad_data:
                self.bad += 1
            else:
                self.failures += 1
            if not self.healthy or self.failures + self.bad < max(self.failure_limit, 1):
                log.debug("mirror %s failed (%s), %d in a row", self.name(), error, self.failures)
                return
            self.healthy = False
        log.warning("mirror %s failed %d times (last: %s): left out until %s answers, "
                    "asked every %g s", self.name(), self.failures + self.bad, error,
                    url_for_log(self.ping_url), self.check_s)
        try:
            threading.Thread(target=ping, args=(self,), daemon=True, name="mirror-ping").start()
        except RuntimeError:  # no thread to be had: try the mirror itself again
            self.recovered()

    def recovered(self) -> None:
        with self.lock:
            self.failures, self.bad, self.healthy = 0, 0, True
        log.info("mirror %s answers again: it is used again", self.name())


def parse_mirrors(value, warn: bool = True) -> list[Mirror]:
    """The `mirrors` of a backend config: a list of {host, ping_url, headers,
    health_check_interval, failure_limit} (other keys of older releases, auth_through and
    health_check_pause_elapsed, are accepted and unused). An entry with an empty host is skipped,
    as upstream does; anything malformed raises MirrorConfigError naming it."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise MirrorConfigError(f"'mirrors' must be a list, not {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        where = f"mirrors[{i}]"
        if not isinstance(m, dict):
            raise MirrorConfigError(f"'{where}' must be an object, not {type(m).__name__}")
        host = m.get("host", "")
        if not isinstance(host, str):
            raise MirrorConfigError(f"'{where}.host' must be a string")
        if not host:
            continue
        parts = _http_url(host, f"{where}.host")
        if warn and (parts.path not in ("", "/") or parts.query):
            log.warning("%s.host %s: its path is ignored (only scheme, host and port are used)",
                        where, url_for_log(host))
        base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        ping = m.get("ping_url") or ""
        if not isinstance(ping, str):
            raise MirrorConfigError(f"'{where}.ping_url' must be a string")
        if ping:
            _http_url(ping, f"{where}.ping_url")
        headers = m.get("headers") or {}
        if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise MirrorConfigError(f"'{where}.headers' must map names to strings")
        for k, v in headers.items():
            if not HEADER_NAME.fullmatch(k) or not header_value_ok(v):
                raise MirrorConfigError(f"'{where}.headers': {k[:40]!r} is not a header name "
                                        "with a value of one line of Latin-1 text")
            if k.lower() in RESERVED:
                raise MirrorConfigError(f"'{where}.headers': {k!r} is set by pynydusd itself")
        check = m.get("health_check_interval", DEFAULT_CHECK_S)
        if isinstance(check, bool) or not isinstance(check, int | float) or not 0 <= check <= 1 << 31:
            raise MirrorConfigError(f"'{where}.health_check_interval' must be a number of seconds")
        limit = m.get("failure_limit", DEFAULT_FAILURE_LIMIT)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= 255:
            raise MirrorConfigError(f"'{where}.failure_limit' must be an integer in 0..255")
        out.append(Mirror(base, dict(headers), ping or base + "/v2",
                          max(float(check), MIN_CHECK_S), limit))
    return out


def header_value_ok(v: str) -> bool:
    """A header value that can be sent: one line of Latin-1 text, without leading whitespace
    (which requests refuses to send)."""
    try:
        v.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return not v[:1].isspace() and not any(ord(c) < 0x20 and c != "\t" or c == "\x7f"
                                                 for c in v)


def _http_url(url: str, where: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        raise MirrorConfigError(f"'{where}' is not a URL: {no_userinfo(url)[:80]!r}") from None
    if (parts.scheme not in ("http", "https") or not parts.hostname
            or any(c.isspace() for c in parts.netloc) or parts.port == 0):
        raise MirrorConfigError(f"'{where}' must be an http:// or https:// URL, not "
                                f"{no_userinfo(url)[:80]!r}")
    return parts

