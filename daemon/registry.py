"""OCI registry backend (nydusd `registry`): ranged blob GETs with auth, redirects, proxy, retries."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import ssl
import threading
import time
import urllib.parse
import warnings
from collections import OrderedDict

from .backends import (
    Backend,
    basic_auth_header,
    http_limits,
    no_userinfo,
    retrying,
    same_origin,
    url_for_log,
)
from .mirrors import (
    HEADER_NAME,
    RESERVED,
    Mirror,
    header_value_ok,
    parse_mirrors,
)
from .storage_errors import BackendError, TemporaryBackendError

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
TOKEN_BODY_MAX = 1 << 20  # a token answer is a few KiB
USER_AGENT = "pynydusd/0.1 (nydusd/1.0.0 compatible)"
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')
RENEW_AT = (0.7, 0.8)  # a bearer token is renewed at this part of its lifetime (jittered)
RENEW_MIN_LIFETIME = 5.0  # shorter-lived tokens are renewed on their 401 only
RENEW_BACKOFF_MAX = 60.0  # seconds between attempts while renewing fails
TOKEN_RETRY_S = 1.0  # after a failed token request, 401s fail with its error for this long
SERVED_BY_MAX = 4096  # ranges remembered with the mirror that served them


class _ProxyDown(Exception):
    """The proxy is down and `fallback` allows going around it (to the mirrors first)."""


def check_host(host: str) -> None:
    """Refuse a registry `host` no request could reach: not [user:password@]host[:port] (a port
    1..65535)."""
    where = host.rpartition("@")[2] if isinstance(host, str) else ""
    bad = not where or any(c in where for c in "/?#\\ ") or not where.isascii()
    if not bad:
        try:
            u = urllib.parse.urlsplit(f"//{where}")
            bad = not u.hostname or u.port == 0 or where.endswith(":")
        except ValueError:  # a port that is not a number, or out of range
            bad = True
    if bad:  # shown up to its port: what looks like one may be a password (user:pass@host)
        shown = where
        shown = shown[:shown.index("]") + 1] if shown.startswith("[") and "]" in shown else \
            shown.partition(":")[0]
        raise BackendError(f"registry 'host' must be host[:port] with a port in 1..65535 (the "
                           f"host given: {shown[:80]!r} and what follows it)")


class RegistryBackend(Backend):
    """Blobs at `<scheme>://<host>/v2/<repo>/blobs/sha256:<id>`."""

    kind = "registry"

    def __init__(self, config: dict, base: str | None = None) -> None:
        """`base`: the URL blob ids are appended to, instead of the registry's (http-proxy)."""
        super().__init__()
        host, repo = config.get("host", ""), config.get("repo", "")
        if base is None and (not host or not repo):
            raise BackendError("registry backend needs 'host' and 'repo'")
        scheme = "http" if config.get("scheme") == "http" else "https"
        if base is not None:
            scheme = urllib.parse.urlsplit(base).scheme
        else:
            check_host(host)
        self.base = base or f"{scheme}://{host}/v2/{repo.strip('/')}/blobs/sha256:"
        self.basic = basic_auth_header(config["auth"]) if config.get("auth") else None
        token = config.get("registry_token")
        self.auth_header: str | None = f"Bearer {token}" if token else None
        self.verify = not config.get("skip_verify", False)
        # nydusd (since nydus#1915 only with skip_verify): a registry that does not speak TLS on
        # its https URL is used over http from then on
        self.may_downgrade = not self.verify and scheme == "https"
        self.extra_headers = env_headers()
        if not self.verify and scheme == "https":
            log.warning("skip_verify: the %s server's TLS certificate is not checked", self.kind)
            warnings.filterwarnings("ignore", message="Unverified HTTPS request")  # said once
        self.timeout, self.retries = http_limits(config)
        proxy = config.get("proxy") or {}
        self.proxy_url = proxy.get("url") or None
        self.proxy_fallback = proxy.get("fallback", True)
        self.proxy_ping = proxy.get("ping_url") or None
        self.proxy_check_s = float(proxy.get("check_interval", 5) or 5)
        self.proxy_use_http = bool(proxy.get("use_http", False))
        self.proxy_down_until = 0.0  # after a proxy failure, requests go direct until then
        self.proxy_healthy = True  # (for logging each outage once)
        self.pinging = False  # a thread pings ping_url
        self.redirect_scheme = config.get("blob_url_scheme") or ""
        self.redirect_host = config.get("blob_redirected_host") or ""
        self.ssl_context = _ssl_context(config.get("ca_cert_files") or [])
        self.redirects: dict[str, str] = {}
        self.local = threading.local()
        self.auth_lock = threading.Lock()
        self.challenge: dict | None = None  # the bearer challenge the current token answers
        self.renew_at = float("inf")  # monotonic time to renew the token before it expires
        self.renew_failures = 0
        self.renewing = False  # a renewal thread runs
        self.auth_failure: tuple[float, BackendError] | None = None  # the last fetch failed: when
        try:
            self.mirrors: list[Mirror] = parse_mirrors(config.get("mirrors"))
        except ValueError as e:
            raise BackendError(str(e)) from None
        self.closed = threading.Event()  # ends the mirrors' health checks
        # which mirror served a range lately: charged when its bytes fail their digest
        self.served_by: OrderedDict[tuple[str, int, int], Mirror] = OrderedDict()

    # -- HTTP plumbing ------------------------------------------------------------------------

    def _session(self):
        s = getattr(self.local, "session", None)
        if s is None:
            from .httpwatch import session  # (requests is imported only when first needed)

            s = session(self.ssl_context if self.verify else None)
            s.headers["User-Agent"] = USER_AGENT
            s.headers.update(self.extra_headers)  # NYDUS_HEADER_<name>, on every request
            s.trust_env = False
            self.local.session = s
        return s

    def _get(self, url: str, headers: dict, proxy: bool):
        import requests

        proxies = {"http": self.proxy_url, "https": self.proxy_url} if proxy else None
        try:
            return self._session().get(url, headers=headers, timeout=self.timeout,
                                       verify=self.verify, allow_redirects=False, stream=True,
                                       proxies=proxies)
        except requests.exceptions.InvalidHeader:  # its text holds the value (a credential?)
            raise BackendError(f"GET {url_for_log(url)}: a header value cannot be sent") from None
        except (requests.RequestException, ValueError) as e:  # ValueError: a malformed Location
            if self.may_downgrade and not proxy and _tls_refused(e) and url.startswith(
                    "https://") and same_origin(url, self.base):
                self._downgrade(e)
            raise TemporaryBackendError(f"GET {url_for_log(url)}: {type(e).__name__}: "
                                        f"{scrub_queries(str(e))}") from None

    def _downgrade(self, error: Exception) -> None:
        """The registry answered its https URL without TLS (or refused the connection): from now
        on use http, as nydusd does with skip_verify (the attempt is retried) - once an http
        request there has been answered at all (a registry merely restarting stays https)."""
        import requests

        http_base = "http://" + self.base[len("https://"):]
        probe = http_base.split("/v2/", 1)[0] + "/v2/"
        try:
            self._session().get(probe, timeout=self.timeout, allow_redirects=False).close()
        except (requests.RequestException, ValueError):
            return
        with self.lock:
            if not self.base.startswith("https://"):
                return
            self.base = http_base
            self.redirects.clear()
        log.warning("registry %s does not speak TLS (%s): using http from now on (skip_verify "
                    "allows it)", no_userinfo(self.base.split("/v2/", 1)[0]), type(error).__name__)

    def _deadline(self) -> float | None:
        """When a body that starts coming now must be in: `timeout` bounds each request."""
        return time.monotonic() + self.timeout[1] if self.timeout[1] else None

    def _read(self, blob_id: str, offset: int, size: int, direct: bool) -> bytes:
        what = f"blob {blob_id} range {offset}+{size}"
        if direct and self.mirrors:
            log.warning("%s: bad data last time: reading it from the registry, not a mirror", what)
        return retrying(self.retries, lambda: self._attempt(blob_id, offset, size, direct), what,
                        self.note_retry)

    def _attempt(self, blob_id: str, offset: int, size: int, direct: bool) -> bytes:
        """One try, in nydusd's order: a usable proxy; then (when the proxy is down and
        `fallback` allows, or there is none) each healthy mirror; then the registry itself.
        `direct` (the last answer held bad data) leaves the mirrors out and charges the one that
        gave it."""
        self._maybe_renew()
        headers = {"Range": f"bytes={offset}-{offset + size - 1}"}
        key = (blob_id, offset, size)
        if direct and self.mirrors:
            with self.lock:
                served = self.served_by.pop(key, None)
            if served is not None:
                served.failed(BackendError("its bytes failed their digest"), self._ping_mirror,
                              bad_data=True)
        mirrors = [m for m in self.mirrors if m.healthy] if not direct else []
        url = self.redirects.get(blob_id) or self.base + blob_id
        if mirrors and self.proxy_url:
            try:
                data = self._answer(self._send(url, headers, blob_id, or_direct=False), blob_id,
                                    offset, size)
                self._served_by_registry(key)
                return data
            except _ProxyDown:
                pass
        for mirror in mirrors:
            data = self._from_mirror(mirror, blob_id, offset, size, headers)
            if data is not None:
                with self.lock:
                    self.served_by[key] = mirror
                    if len(self.served_by) > SERVED_BY_MAX:
                        self.served_by.popitem(last=False)
                return data
        data = self._answer(self._send(url, headers, blob_id), blob_id, offset, size)
        self._served_by_registry(key)
        return data

    def _answer(self, r, blob_id: str, offset: int, size: int) -> bytes:
        """_body of the registry's (or the proxy's) answer, its errors naming the request: the
        blob's URL (not a redirect's, which may carry a signature)."""
        deadline = self._deadline()
        try:
            return _body(r, offset, size, deadline)
        except BackendError as e:
            raise type(e)(f"GET {no_userinfo(self.base + blob_id)}: {e}") from None

    def _served_by_registry(self, key: tuple[str, int, int]) -> None:
        """This range came from the registry (or the proxy): no mirror answers for it now."""
        if self.served_by:
            with self.lock:
                self.served_by.pop(key, None)

    def _maybe_renew(self) -> None:
        """Start renewing the bearer token in a thread when its renewal point has passed."""
        if time.monotonic() >= self.renew_at and not self.renewing:
            self.renewing = True  # (two threads may both start one: the lock lets one through)
            try:
                threading.Thread(target=self._renew_token, daemon=True,
                                 name="token-renewal").start()
            except RuntimeError:  # no thread to be had: the 401 path renews it instead
                self.renewing = False

    def _send(self, url: str, headers: dict, blob_id: str, or_direct: bool = True):
        """GET with auth negotiation, proxy fallback and hand-followed redirects. `or_direct`
        False: raise _ProxyDown instead of going to the registry directly when the proxy is
        down (and `fallback` allows going around it)."""
        for _hop in range(MAX_REDIRECTS + 1):
            origin = same_origin(url, self.base)
            hdrs = dict(headers)
            if origin and self.auth_header:
                hdrs["Authorization"] = self.auth_header
            r = self._via_proxy_or_direct(url, hdrs, or_direct)
            if r.status_code == 401 and origin and "Authorization" in hdrs:
                # credentials were refused: ask again without them for a clean challenge (Harbor
                # answers an expired token with a Basic one), as nydusd does
                r.close()
                sent = hdrs.pop("Authorization")
                at = time.monotonic()
                r = self._via_proxy_or_direct(url, hdrs, or_direct)
                if r.status_code == 401:
                    r.close()
                    self._authenticate(r, sent, at)
                    hdrs["Authorization"] = self.auth_header
                    r = self._via_proxy_or_direct(url, hdrs, or_direct)
                elif r.status_code < 400:  # it needs no credentials: stop sending refused ones
                    with self.auth_lock:
                        if self.auth_header == sent:
                            self.auth_header = None
            elif r.status_code == 401 and origin:
                r.close()
                self._authenticate(r, hdrs.get("Authorization"), time.monotonic())
                hdrs["Authorization"] = self.auth_header
                r = self._via_proxy_or_direct(url, hdrs, or_direct)
            if r.status_code in (301, 302, 303, 307, 308) and "Location" in r.headers:
                url = self._redirect_target(urllib.parse.urljoin(url, r.headers["Location"]))
                r.close()
                self.redirects[blob_id] = url
                continue
            if r.status_code in (401, 403) and self.redirects.pop(blob_id, None) is not None:
                # a stale presigned URL: start over at the registry
                r.close()
                raise TemporaryBackendError(f"redirect target answered {r.status_code}")
            return r
        self.redirects.pop(blob_id, None)  # start over at the registry next time
        raise BackendError(f"too many redirects for blob {blob_id}")

    def _from_mirror(self, mirror: Mirror, blob_id: str, offset: int, size: int,
                     headers: dict) -> bytes | None:
        """The range from `mirror`, or None when it cannot serve it (the caller goes on to the next
        mirror or the registry). The mirror gets its own headers and the registry's current
        Authorization (a pull-through mirror relays it); a redirect to another host gets
        neither."""
        from requests.structures import CaseInsensitiveDict

        url = mirror.url(self.base + blob_id)
        hdrs = CaseInsensitiveDict(headers)
        if self.auth_header:
            hdrs["Authorization"] = self.auth_header
        hdrs.update(mirror.headers)  # the mirror's own (an Authorization of its own wins)
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                r = self._get(url, hdrs, proxy=False)
                if r.status_code not in (301, 302, 303, 307, 308) or "Location" not in r.headers:
                    break
                r.close()
                url = self._redirect_target(urllib.parse.urljoin(url, r.headers["Location"]))
                if not same_origin(url, mirror.host):
                    hdrs = dict(headers)
            else:
                raise TemporaryBackendError("too many redirects")
            status = r.status_code
            if status == 429 or status >= 500:
                r.close()
                raise TemporaryBackendError(f"answered {status}")
            if status not in (200, 206) or _ignored_range(r, offset, size):
                r.close()
                mirror.missed(f"answered {status}" if status != 200 else
                              "a whole blob for a ranged GET")
                return None
            data = _body(r, offset, size, self._deadline())
        except BackendError as e:
            mirror.failed(e, self._ping_mirror)
            return None
        mirror.succeeded()
        return data

    def _ping_until_up(self, url: str, every: float) -> bool:
        """Ask `url` every `every` seconds until it answers below 500 (True), or until the
        backend closes (False): the health check of a mirror or a proxy that failed."""
        while not self.closed.wait(every):
            try:
                r = self._session().get(url, timeout=self.timeout, verify=self.verify,
                                        allow_redirects=False, stream=True)
                r.close()
            except Exception:  # noqa: BLE001 - any failure means: not yet
                continue
            if r.status_code < 500 and not self.closed.is_set():
                return True
        return False

    def _ping_mirror(self, mirror: Mirror) -> None:
        if self._ping_until_up(mirror.ping_url, mirror.check_s):
            mirror.recovered()

    def close(self) -> None:
        self.closed.set()

    def _redirect_target(self, url: str) -> str:
        """A redirect's target, with `blob_redirected_host` and `blob_url_scheme` applied (a
        storage endpoint closer to the node, or a scheme a middlebox wants)."""
        if not (self.redirect_host or self.redirect_scheme):
            return url
        parts = urllib.parse.urlsplit(url)
        return urllib.parse.urlunsplit(parts._replace(
            scheme=self.redirect_scheme or parts.scheme,
            netloc=self.redirect_host or parts.netloc))

    def _via_proxy_or_direct(self, url: str, headers: dict, or_direct: bool = True):
        """Through the proxy when one is set and healthy, else (with `fallback`) straight to the
        origin. A proxy that failed (no connection, a timeout, a 5xx) is skipped for
        `check_interval` seconds, so that a dead proxy costs one request a timeout per interval,
        not every request; with `ping_url`, it is used again only once a ping answers."""
        if self.proxy_url and (not self.proxy_fallback or time.monotonic() >= self.proxy_down_until):
            via = url
            if self.proxy_use_http and via.startswith("https://"):
                via = "http://" + via[len("https://"):]
            try:
                r = self._get(via, headers, proxy=True)
                if r.status_code < 500:
                    if not self.proxy_healthy:
                        self.proxy_healthy = True
                        log.info("proxy %s answers again", no_userinfo(self.proxy_url))
                    return r
                r.close()
                raise TemporaryBackendError(f"proxy answered {r.status_code}")
            except TemporaryBackendError as e:
                if not self.proxy_fallback:
                    raise
                self._proxy_failed(e)
        if self.proxy_url and not or_direct:
            raise _ProxyDown()
        return self._get(url, headers, proxy=False)

    def _proxy_failed(self, error: BackendError) -> None:
        self.proxy_down_until = time.monotonic() + (
            float("inf") if self.proxy_ping else self.proxy_check_s)
        if self.proxy_healthy:
            self.proxy_healthy = False
            log.warning("proxy %s failed (%s): going to the registry directly, trying the proxy "
                        "again %s", no_userinfo(self.proxy_url), error,
                        "once its ping_url answers" if self.proxy_ping
                        else f"every {self.proxy_check_s:g} s")
        if self.proxy_ping and not self.pinging:
            self.pinging = True
            try:
                threading.Thread(target=self._ping_proxy, daemon=True, name="proxy-ping").start()
            except RuntimeError:  # no thread: try the proxy itself again after the interval
                self.pinging = False
                self.proxy_down_until = time.monotonic() + self.proxy_check_s

    def _ping_proxy(self) -> None:
        """Keep the proxy marked down until its ping_url answers (below 500), asking every
        check_interval seconds."""
        try:
            if self._ping_until_up(self.proxy_ping, self.proxy_check_s):
                self.proxy_down_until = 0.0
        finally:
            self.pinging = False

    # -- authentication -----------------------------------------------------------------------

    def set_auth(self, auth: str) -> None:
        """New credentials (PUT /api/v1/config): the header or token negotiated with the old ones
        is dropped, so the next request authenticates afresh."""
        basic = basic_auth_header(auth)
        with self.auth_lock:
            self.basic = basic
            self.auth_header = None
            self.challenge, self.renew_at, self.renew_failures = None, float("inf"), 0

    def _authenticate(self, r, sent: str | None, at: float) -> None:
        """Answer a 401, met at monotonic time `at`, to a request that carried `sent` (None: no
        Authorization). When another thread has replaced that header meanwhile, its answer is
        used; when another thread's token request failed after this 401 came, or less than
        TOKEN_RETRY_S ago, its error is: a token that expires under many readers is fetched
        once, not once per reader, whether the token server answers or not."""
        challenge = r.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        with self.auth_lock:
            if self.auth_header is not None and self.auth_header != sent:
                return
            if self.auth_failure is not None and (
                    self.auth_failure[0] >= at
                    or time.monotonic() - self.auth_failure[0] < TOKEN_RETRY_S):
                error = self.auth_failure[1]
                raise type(error)(str(error))
            if scheme == "basic":
                if not self.basic:
                    raise BackendError("registry wants basic auth and no 'auth' is configured")
                self.auth_header = self.basic
            elif scheme == "bearer":
                params = dict(_CHALLENGE_RE.findall(challenge))
                try:
                    self.auth_header = "Bearer " + self._fetch_token(params)
                except BackendError as e:
                    self.auth_failure = (time.monotonic(), e)
                    raise
                self.auth_failure = None
            else:
                raise BackendError(f"registry answered 401 with challenge {challenge[:100]!r}")

    def _renew_token(self) -> None:
        """Renew the bearer token before it expires, so that no request meets a 401 for it (and no
        slow mirror has to relay one). It runs in a thread of its own, started by the request
        that finds the renewal due, which like every other goes on with the current token. A
        failed renewal keeps that token while it lasts and is retried with backoff (logged once
        per failing streak); the renewal point is jittered so that daemons started together do
        not ask the token server together."""
        if not self.auth_lock.acquire(blocking=False):
            self.renewing = False
            return
        try:
            challenge = self.challenge
            if challenge is None or time.monotonic() < self.renew_at:
                return
            failed = self.renew_failures
            try:
                self.auth_header = "Bearer " + self._fetch_token(challenge)
            except BackendError as e:
                self.renew_failures += 1
                delay = min(2.0 ** self.renew_failures, RENEW_BACKOFF_MAX)
                self.renew_at = time.monotonic() + delay * random.uniform(0.5, 1.0)
                if self.renew_failures == 1:
                    log.warning("renewing the registry token failed (%s): the current one is used "
                                "while it lasts, renewal is retried with backoff", e)
                return
            if failed:
                log.info("registry token renewed after %d failed attempts", failed)
        finally:
            self.renewing = False
            self.auth_lock.release()

    def _fetch_token(self, params: dict) -> str:
        import requests

        realm = params.get("realm")
        if not realm:
            raise BackendError("bearer challenge without realm")
        form = {"service": params.get("service", ""), "scope": params.get("scope", ""),
                "client_id": "nydus-registry-client"}
        headers = {"Authorization": self.basic} if self.basic else {}
        s = self._session()
        try:
            r = s.post(realm, data=form, headers=headers, timeout=self.timeout, verify=self.verify,
                       stream=True)
            if r.status_code >= 400:
                r.close()
                r = s.get(realm, params=form, headers=headers, timeout=self.timeout,
                          verify=self.verify, stream=True)
        except (requests.RequestException, ValueError) as e:
            raise TemporaryBackendError(f"token request failed: {type(e).__name__}") from None
        if r.status_code >= 400:
            r.close()
            raise BackendError(f"token server answered {r.status_code}")
        deadline = self._deadline()
        raw = _capped_body(r, TOKEN_BODY_MAX, deadline)
        try:
            body = json.loads(raw)
        except ValueError:
            raise BackendError("token server did not answer JSON") from None
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not token or not isinstance(token, str):
            raise BackendError("token server answer has no token")
        expires = body.get("expires_in", 60)  # the distribution token spec's default
        if isinstance(expires, bool) or not isinstance(expires, int | float) or expires != expires:
            raise BackendError(f"token server answer has a bad expires_in: {str(expires)[:40]!r}")
        lifetime = float(expires)
        self.challenge, self.renew_failures = params, 0
        self.renew_at = (time.monotonic() + lifetime * random.uniform(*RENEW_AT)
                         if lifetime >= RENEW_MIN_LIFETIME else float("inf"))
        return token


def _ssl_context(ca_files: list[str]) -> ssl.SSLContext | None:
    """The default trust store plus the PEM files of `ca_cert_files` (a private registry's CA);
    None when there are none. A missing or unreadable file fails the start, by name."""
    if not ca_files:
        return None
    ctx = ssl.create_default_context()
    try:
        import certifi

        ctx.load_verify_locations(certifi.where())  # what requests trusts by default
    except ImportError:
        pass
    for path in ca_files:
        try:
            ctx.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as e:
            raise BackendError(f"ca_cert_files: cannot load {path}: {e}") from None
    return ctx


def _tls_refused(e: BaseException) -> bool:
    """An https request that failed as nydusd downgrades on: a TLS error (no TLS spoken there:
    wrong version number and the like) or the connection refused, found among the causes."""
    seen: set[int] = set()
    stack: list = [e]
    while stack:
        x = stack.pop()
        if not isinstance(x, BaseException) or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, ssl.SSLError | ConnectionRefusedError):
            return True
        stack += [x.__cause__, x.__context__, getattr(x, "reason", None), *x.args]
    return False


_QUERY_RE = re.compile(r"\?[^\s'\")]*")


def scrub_queries(text: str) -> str:
    """`text` without URL query strings (presigned URLs sign there)."""
    return _QUERY_RE.sub("?...", text)


ENV_HEADER_PREFIX = "NYDUS_HEADER_"


def env_headers(environ=None) -> dict[str, str]:
    """The extra headers of `NYDUS_HEADER_<Name>=<value>` variables (nydusd sends them on every
    backend request). Unsendable ones and those the client sets itself are skipped, logged."""
    out = {}
    for key, value in (os.environ if environ is None else environ).items():
        if not key.startswith(ENV_HEADER_PREFIX):
            continue
        name = key[len(ENV_HEADER_PREFIX):]
        if not HEADER_NAME.fullmatch(name) or not header_value_ok(value) or name.lower() in RESERVED:
            log.warning("%s: not a header pynydusd can send: ignored", key[:80])
            continue
        out[name] = value
    return out


def _content_range(value: str) -> tuple[int, int] | None:
    """(first, last) of a `Content-Range: bytes first-last/total` header, None if unparsable."""
    unit, _, rest = value.strip().partition(" ")
    span = rest.split("/", 1)[0]
    first, _, last = span.partition("-")
    if unit.lower() != "bytes" or not first.isdigit() or not last.isdigit():
        return None
    return int(first), int(last)


def _ignored_range(r, offset: int, size: int) -> bool:
    """A 200 without Content-Range and of another length than asked: the whole blob. (One of
    exactly the asked length is the range, as nydusd takes it: a whole blob can have that
    length only when the range starts at 0 and covers it all.)"""
    return r.status_code == 200 and "Content-Range" not in r.headers and \
        r.headers.get("Content-Length") != str(size)


def _body(r, offset: int, size: int, deadline: float | None = None) -> bytes:
    """Exactly the `size` bytes at `offset` of a ranged answer, or a (temporary) error. The body
    must be in by `deadline` (time.monotonic()): a server that trickles it fails the attempt."""
    status = r.status_code
    try:
        if status in (429,) or status >= 500:
            raise TemporaryBackendError(f"server answered {status}")
        if _ignored_range(r, offset, size):
            raise BackendError("server ignored the Range header (200 without Content-Range)")
        if status not in (200, 206):
            raise BackendError(f"server answered {status}: {r.raw.read(200, decode_content=True)!r}")
        if "Content-Range" in r.headers:
            got_range = _content_range(r.headers["Content-Range"])
            if got_range != (offset, offset + size - 1):
                raise TemporaryBackendError(
                    f"server sent range {r.headers['Content-Range'][:80]!r} for bytes "
                    f"{offset}-{offset + size - 1}")
    except BackendError:
        r.close()
        raise
    except Exception as e:  # the connection failing while we look
        r.close()
        raise TemporaryBackendError(f"reading answer: {type(e).__name__}") from None
    data = _read_all(r, size, deadline, size,
                     TemporaryBackendError(f"body longer than the {size} bytes asked for"))
    if len(data) != size:
        raise TemporaryBackendError(f"short body: {len(data)} of {size} bytes")
    return data


def _capped_body(r, limit: int, deadline: float | None) -> bytes:
    """The whole body of a small answer (a token): at most `limit` bytes, in by `deadline`."""
    return _read_all(r, limit, deadline, None, BackendError(f"answer larger than {limit} bytes"))


def _read_all(r, limit: int, deadline: float | None, expect: int | None,
              too_long: BackendError) -> bytes:
    """r's body as it arrives (then r is closed): more than `limit` bytes raises `too_long`; a
    body still incomplete (short of `expect` bytes, or of its Content-Length) at `deadline` and a
    connection failing midway raise TemporaryBackendError."""
    parts, got = [], 0
    try:
        while piece := r.raw.read1(1 << 16, decode_content=True):  # whatever has arrived
            parts.append(piece)
            got += len(piece)
            if got > limit:
                raise too_long
            # a body of unknown length (chunked, or up to the close) is bounded by the socket
            # timeout between pieces and by `limit`; one of known length also by `deadline`
            left = expect - got if expect is not None else getattr(r.raw, "length_remaining", None)
            if deadline is not None and time.monotonic() > deadline and left:
                raise TemporaryBackendError(f"body too slow: only {got} bytes by the deadline")
    except BackendError:
        raise
    except Exception as e:  # connection reset mid-body and the like
        raise TemporaryBackendError(f"reading body: {type(e).__name__}") from None
    finally:
        r.close()
    return b"".join(parts)

