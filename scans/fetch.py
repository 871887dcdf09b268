"""Fetch URLs concurrently and measure each one: the Django-free core.

One ``Fetcher`` owns one aiohttp ``ClientSession`` for a whole process. Every
fetch streams its body in chunks and counts them (the body is never held
whole), follows redirects itself so each hop is checked again, and ends as a
``Fetched`` record: either the answer's metrics or one error class.

The SSRF guard sits where connections are opened: the resolver drops blocked
answers and the socket factory refuses blocked addresses, so IP-literal URLs
(which skip the resolver) are caught too and the address checked is the
address connected to.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import itertools
import os
import re
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import aiohttp
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from scans.addresses import Network, why_blocked

ERROR_KINDS = (
    "dns",
    "connect",
    "timeout",
    "tls",
    "too_large",
    "too_many_redirects",
    "blocked",
    "cancelled",
    "other",
)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
USER_AGENT = "scraperproj/1.0 (+https://github.com/scraperproj)"
MAX_MESSAGE_CHARS = 500
NO_HOST = "the URL has no host"


@dataclass(frozen=True)
class Limits:
    """What one fetch may cost, and where it may go."""

    timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 10
    per_host: int = 10
    max_open: int = 500
    allowed_networks: tuple[Network, ...] = ()
    allowed_ports: frozenset[int] | None = frozenset({80, 443})
    dns_cache_s: int = 10


@dataclass
class Fetched:
    """What one fetch found: the metrics of the answer, or an error class."""

    url: str
    http_status: int | None = None
    size: int | None = None
    wire_size: int | None = None
    content_type: str = ""
    ttfb_ms: float | None = None
    elapsed_ms: float | None = None
    start_ms: float | None = None
    final_url: str = ""
    redirects: int = 0
    error: str | None = None
    error_message: str = ""
    finished_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict:
        return asdict(self)


class FetchError(Exception):
    """A fetch that ended in one of our own error classes."""

    kind = "other"


class TooLarge(FetchError):
    kind = "too_large"


class TooManyRedirects(FetchError):
    kind = "too_many_redirects"


class BlockedURL(FetchError):
    kind = "blocked"


class BlockedAddress(OSError):
    """Raised where a connection would be opened to a blocked address.

    An OSError so that aiohttp carries it through its connection machinery.
    """


# The shape of nearly every URL a person pastes: http or https, a host name or IPv4 address
# in ASCII letters, digits, dots and dashes, maybe a port, then the path. yarl reads such a
# URL's scheme, host and port as they are written (tests/test_ssrf.py checks that against
# yarl); read here, the form checked 10,000 URLs in 14-42 ms, not 48-78 ms (docs/bench.md).
_PLAIN_URL = re.compile(r"(https?)://([a-z0-9.-]+)(?::([0-9]{1,5}))?(?=[/?#]|\Z)", re.I | re.A)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A host name or address, maybe a port, then the path: a URL without its scheme, which
# yarl reads as a scheme ("localhost:8080/page") or as a path ("example.com/page").
_SCHEMELESS = re.compile(
    r"(localhost|[a-z0-9-]+(\.[a-z0-9-]+)+)(:[0-9]{1,5})?(?=[/?#]|\Z)", re.I | re.A
)
NO_SCHEME = "only http:// and https:// URLs can be scanned: write one of them in front"


def why_url_refused(url: str | URL, allowed_ports: frozenset[int] | None) -> str | None:
    """None when ``url`` may be fetched; otherwise why not, in a few words.

    Read with yarl, as aiohttp reads it, so what is checked is what is fetched.
    """
    if isinstance(url, URL):
        return _why_parsed_url_refused(url, allowed_ports)
    plain = _PLAIN_URL.match(url)
    if plain is not None:
        scheme, host, port = plain.groups()
        port = _DEFAULT_PORTS[scheme.lower()] if port is None else int(port)
        if port <= 65535:  # else yarl says what is wrong with it
            return _why_host_or_port_refused(host.lower(), port, allowed_ports)
    return _why_text_refused(url, allowed_ports)


def _why_text_refused(url: str, allowed_ports: frozenset[int] | None) -> str | None:
    if _SCHEMELESS.match(url):
        return NO_SCHEME
    # An empty user name ("http://@host/") too, which yarl drops without a word.
    try:
        if "@" in url and "@" in urlsplit(url).netloc:
            return "URLs with a user name or password are not allowed"
        parsed = URL(url)
    except ValueError as e:
        if "host is required" in str(e):  # yarl's words for "http://:8080/"
            return NO_HOST
        return f"not a valid URL ({e})"
    return _why_parsed_url_refused(parsed, allowed_ports)


def _why_parsed_url_refused(url: URL, allowed_ports: frozenset[int] | None) -> str | None:
    if not url.scheme and not url.raw_host:
        return "not a URL: a URL starts with http:// or https://"
    if url.scheme not in ("http", "https"):
        return "only http:// and https:// URLs can be scanned"
    host = url.raw_host
    if not host:
        return NO_HOST
    if any(c.isspace() for c in host):
        return f"the host name {host!r} has a space in it"
    if url.raw_user is not None or url.raw_password is not None:
        return "URLs with a user name or password are not allowed"
    return _why_host_or_port_refused(host, url.port, allowed_ports)


def _why_host_or_port_refused(
    host: str, port: int | None, allowed_ports: frozenset[int] | None
) -> str | None:
    if _is_legacy_ipv4(host):
        return f"{host} is not a standard IP address; write it as four decimal numbers"
    if allowed_ports is not None and port not in allowed_ports:
        allowed = ", ".join(str(p) for p in sorted(allowed_ports))
        return f"port {port} is not allowed (allowed: {allowed})"
    return None


@functools.lru_cache(maxsize=1024)
def _is_legacy_ipv4(host: str) -> bool:
    """True for numeric forms such as ``2130706433``, ``0x7f.1`` or ``127.1``.

    The C library reads these as addresses, so they would reach the resolver
    as names; refused here, the person learns why instead of seeing "blocked".
    Cached: a scan asks about the same few hosts again and again.
    """
    try:
        socket.inet_aton(host)
    except (OSError, ValueError):
        return False
    try:
        return str(ipaddress.IPv4Address(host)) != host
    except ValueError:
        return True


class GuardedResolver(AbstractResolver):
    """Resolves through ``inner`` and keeps only the answers we may connect to."""

    def __init__(self, allowed: Sequence[Network], inner: AbstractResolver | None = None):
        self._allowed = tuple(allowed)
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if not answers:
            raise OSError(f"{host} has no addresses")
        verdicts = [(a, why_blocked(a["host"], self._allowed)) for a in answers]
        kept = [a for a, reason in verdicts if reason is None]
        if not kept:
            raise BlockedAddress(f"{host} resolves to a blocked address: {verdicts[0][1]}")
        return kept

    async def close(self) -> None:
        await self._inner.close()


class _BodyCounter:
    """Counts wire and decoded body bytes, decoding gzip/deflate in bounded steps."""

    def __init__(self, encoding: str, max_bytes: int):
        self.max_bytes = max_bytes
        self.wire_size = 0
        self.size = 0
        encoding = encoding.strip().lower()
        self._decoder = None
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS)
        self._first = True

    def feed(self, chunk: bytes) -> None:
        self.wire_size += len(chunk)
        if self.wire_size > self.max_bytes:
            raise TooLarge(f"more than {_bytes(self.max_bytes)} received")
        if self._decoder is None:
            self._count(len(chunk))
            return
        if self._first and self._decoder and chunk:
            self._first = False
            self._maybe_raw_deflate(chunk)
        self._decode(chunk)

    def _maybe_raw_deflate(self, chunk: bytes) -> None:
        # Some servers send raw deflate without the zlib header.
        if self._decoder is not None and chunk[0] & 0x0F != 8 and not chunk.startswith(b"\x1f\x8b"):
            self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)

    def _decode(self, data: bytes) -> None:
        try:
            while data:
                out = self._decoder.decompress(data, CHUNK_BYTES)
                self._count(len(out))
                data = self._decoder.unconsumed_tail
        except zlib.error as e:
            raise FetchError(f"the compressed body could not be decoded ({e})") from e

    def _count(self, n: int) -> None:
        self.size += n
        if self.size > self.max_bytes:
            raise TooLarge(f"body decodes to more than {_bytes(self.max_bytes)}")

    def finish(self) -> None:
        if self._decoder is not None:
            self._count(len(self._decoder.flush(CHUNK_BYTES)))


def _bytes(n: int) -> str:
    """A size limit as people write it: ``10 MiB``, ``64 KiB`` or ``1,500 bytes``."""
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size:,} {unit}"
    return f"{n:,} bytes"


def _ms(seconds: float) -> float:
    # Tenths of a millisecond; round(x, 1) gives the same but goes through decimal digits.
    return round(seconds * 10_000) / 10


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "os_error", None)]
    return seen


def classify(exc: BaseException, limits: Limits) -> tuple[str, str]:
    """Maps an exception from a fetch to (error class, message for people)."""
    for e in _chain(exc):
        if isinstance(e, BlockedAddress):
            return "blocked", str(e)
    if isinstance(exc, FetchError):
        return exc.kind, str(exc)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "timeout", f"could not connect within {limits.connect_timeout_s:g} s"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns", f"could not resolve {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        problem = getattr(exc.certificate_error, "verify_message", "") or exc.certificate_error
        return "tls", f"the certificate of {exc.host} is not valid: {problem}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls", f"TLS failed: {exc}"
    if isinstance(exc, ssl.SSLError):
        return "tls", f"TLS failed: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        # The system's words for the errno ("Connection refused"), not asyncio's message,
        # which carries the address as a Python tuple.
        reason = os.strerror(exc.errno) if exc.errno else exc.strerror or exc.os_error
        return "connect", f"could not connect to {exc.host}:{exc.port} ({reason})"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError)):
        return "connect", f"the connection was closed or reset ({exc})"
    if isinstance(exc, aiohttp.ClientResponseError):
        # Raised by the parser: the server's answer is not HTTP we can read.
        return "other", f"not a valid HTTP answer: {' '.join(exc.message.split())}"
    return "other", f"{type(exc).__name__}: {exc}"


_Origin = tuple[str, str | None, int | None]
# Told of a fetch that waits for its host: None as it starts waiting, then its start (ms
# from the scan's start) once it is under way.
UnderWay = Callable[[float | None], None]


class _HostGate:
    """One origin's ``per_host`` slots, handed to waiters in the order they came.

    A plain counter, not an ``asyncio.Semaphore``: a free slot is taken
    without awaiting anything, which is nearly every fetch. It leaves
    ``gates`` when its last user is done with it.
    """

    __slots__ = ("_gates", "_key", "_waiters", "free", "users")

    def __init__(self, gates: dict[_Origin | None, _HostGate], key: _Origin | None, per_host: int):
        self._gates = gates
        self._key = key
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.free = per_host
        self.users = 0

    async def __aenter__(self) -> None:
        if self.free:
            self.free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot as it was cancelled: pass it on
            else:
                waiter.cancel()  # _release skips it
            self._leave()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()
        self._leave()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1

    def _leave(self) -> None:
        self.users -= 1
        if not self.users:
            del self._gates[self._key]


class _HostGates:
    """At most ``per_host`` fetches at once per scheme, host and port.

    aiohttp's own per-host limit would queue inside the fetch, where the wait
    would count toward the URL's deadline and timings. A gate is dropped when
    nobody holds or awaits it, so a long-lived worker keeps no gate per host
    it ever saw.
    """

    def __init__(self, per_host: int):
        self.per_host = per_host
        self._gates: dict[_Origin | None, _HostGate] = {}

    def slot(self, key: _Origin | None) -> _HostGate:
        """The gate of ``key``, counted as used until its ``async with`` ends."""
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _HostGate(self._gates, key, self.per_host)
        gate.users += 1
        return gate

    def __len__(self) -> int:
        return len(self._gates)


def _parse(url: str) -> URL | None:
    """``url`` as aiohttp will read it; None when it cannot (it is refused later)."""
    try:
        return URL(url)
    except ValueError:
        return None


def _origin(url: URL | None) -> _Origin | None:
    return None if url is None else (url.scheme, url.raw_host, url.port)


class _Deadlines:
    """Expires each fetch's ``asyncio.Timeout`` on time, with one timer for all of them.

    A timer of its own per fetch costs a heap entry and, once cancelled, a heap
    clean-up: about a twentieth of a fetch's CPU. Fetches given the same timeout
    reach their deadlines in the order they began, so each timeout keeps its
    fetches in an insertion-ordered dict, earliest first, and one timer waits
    for the earliest deadline of all. asyncio's own ``Timeout`` still does the
    cancelling, so a timeout is told apart from a cancellation as before.
    """

    def __init__(self) -> None:
        self._by_timeout: dict[float, dict[asyncio.Timeout, float]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, deadline: asyncio.Timeout, timeout_s: float) -> None:
        """Expires ``deadline``, entered and with no time of its own, in ``timeout_s``."""
        loop = asyncio.get_running_loop()
        when = loop.time() + timeout_s
        watched = self._by_timeout.get(timeout_s)
        if watched is None:
            watched = self._by_timeout[timeout_s] = {}
        watched[deadline] = when
        if self._timer is None or when < self._timer.when():
            self._arm(loop, when)

    def forget(self, deadline: asyncio.Timeout, timeout_s: float) -> None:
        watched = self._by_timeout.get(timeout_s)
        if watched is None:
            return  # already taken by _take_due when it expired
        watched.pop(deadline, None)
        if not watched:
            del self._by_timeout[timeout_s]

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __len__(self) -> int:
        return sum(len(watched) for watched in self._by_timeout.values())

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._expire_due)

    def _expire_due(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        due = self._take_due(loop.time())
        heads = [next(iter(watched.values())) for watched in self._by_timeout.values()]
        if heads:
            self._arm(loop, min(heads))
        for deadline, when in due:
            deadline.reschedule(when)  # now or past: asyncio cancels the fetch at once

    def _take_due(self, now: float) -> list[tuple[asyncio.Timeout, float]]:
        due: list[tuple[asyncio.Timeout, float]] = []
        for timeout_s, watched in list(self._by_timeout.items()):
            expired = list(itertools.takewhile(lambda item: item[1] <= now, watched.items()))
            for deadline, _ in expired:
                del watched[deadline]
            if not watched:
                del self._by_timeout[timeout_s]
            due += expired
        return due


class Fetcher:
    """One session for many fetches: ``async with Fetcher(limits) as f: await f.fetch(...)``."""

    def __init__(self, limits: Limits, resolver: AbstractResolver | None = None):
        self.limits = limits
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._host_gates = _HostGates(limits.per_host)
        self._deadlines = _Deadlines()

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(
            limit=self.limits.max_open,
            limit_per_host=self.limits.per_host,
            resolver=GuardedResolver(self.limits.allowed_networks, self._inner_resolver),
            socket_factory=self._open_socket,
            use_dns_cache=self.limits.dns_cache_s > 0,
            ttl_dns_cache=self.limits.dns_cache_s or None,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.limits.connect_timeout_s,
            ),
            auto_decompress=False,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"},
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._deadlines.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_socket(self, addr_info: tuple) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        reason = why_blocked(sockaddr[0], self.limits.allowed_networks)
        if reason is not None:
            raise BlockedAddress(reason)
        return socket.socket(family, type_, proto)

    async def fetch(
        self,
        url: str,
        scan_start: float,
        timeout_s: float | None = None,
        waits: UnderWay | None = None,
    ) -> Fetched:
        """Fetches ``url``; ``scan_start`` is the ``time.monotonic()`` the scan began.

        Waiting for a free connection to the host comes first and counts
        toward neither the deadline nor the timings. When the fetch has to wait,
        ``waits(None)`` is called before, and ``waits(start_ms)`` once it is under way.
        """
        first = _parse(url)
        gate = self._host_gates.slot(_origin(first))
        waiting = waits is not None and not gate.free
        if waiting:
            waits(None)
        async with gate:
            started = time.monotonic()
            result = Fetched(url=url, start_ms=_ms(started - scan_start))
            if waiting:
                waits(result.start_ms)
            timeout_s = timeout_s or self.limits.timeout_s
            return await self._fetch_timed(result, first, started, timeout_s)

    async def _fetch_timed(
        self, result: Fetched, first: URL | None, started: float, timeout_s: float
    ) -> Fetched:
        url = result.url
        deadline = asyncio.timeout(None)
        try:
            async with deadline:
                self._deadlines.watch(deadline, timeout_s)
                try:
                    await self._follow(url if first is None else first, result, started)
                finally:
                    self._deadlines.forget(deadline, timeout_s)
        except Exception as e:  # noqa: BLE001 - every failure becomes a row's error
            if deadline.expired():
                result.error = "timeout"
                result.error_message = f"no complete answer within {timeout_s:g} s"
            else:
                result.error, result.error_message = classify(e, self.limits)
            result.error_message = result.error_message[:MAX_MESSAGE_CHARS]
            result.size = result.wire_size = None
        result.elapsed_ms = _ms(time.monotonic() - started)
        result.finished_at = time.time()
        return result

    async def _follow(self, current: str | URL, result: Fetched, started: float) -> None:
        assert self._session is not None, "use Fetcher as an async context manager"
        for _ in range(self.limits.max_redirects + 1):
            refusal = why_url_refused(current, self.limits.allowed_ports)
            if refusal is not None:
                raise BlockedURL(refusal)
            async with self._session.get(current, allow_redirects=False) as response:
                headers = response.headers
                location = headers.get(hdrs.LOCATION)
                if response.status in REDIRECT_STATUSES and location:
                    current = response.url.join(URL(location))
                    result.redirects += 1
                    continue
                result.ttfb_ms = _ms(time.monotonic() - started)
                result.http_status = response.status
                result.content_type = headers.get(hdrs.CONTENT_TYPE, "")[:200]
                result.final_url = str(response.url)
                await self._count_body(response, result)
                return
        raise TooManyRedirects(f"more than {self.limits.max_redirects} redirects")

    async def _count_body(self, response: aiohttp.ClientResponse, result: Fetched) -> None:
        encoding = response.headers.get(hdrs.CONTENT_ENCODING)
        if encoding:
            await self._count_encoded_body(response, encoding, result)
            return
        max_bytes, size, content = self.limits.max_bytes, 0, response.content
        while chunk := await content.readany():
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"more than {_bytes(max_bytes)} received")
        result.size = result.wire_size = size

    async def _count_encoded_body(
        self, response: aiohttp.ClientResponse, encoding: str, result: Fetched
    ) -> None:
        counter = _BodyCounter(encoding, self.limits.max_bytes)
        content = response.content
        while chunk := await content.readany():
            counter.feed(chunk)
        counter.finish()
        result.size, result.wire_size = counter.size, counter.wire_size


async def fetch_all(
    urls: Sequence[str], limits: Limits, concurrency: int
) -> AsyncIterator[tuple[int, Fetched]]:
    """Yields (position, result) for each URL the moment its fetch completes.

    ``concurrency`` loops take the URLs in order: one task a loop, not one a URL.
    """
    scan_start = time.monotonic()
    done: asyncio.Queue[tuple[int, Fetched] | Exception] = asyncio.Queue()
    todo = enumerate(urls)
    async with Fetcher(limits) as fetcher:

        async def fetch_in_turn() -> None:
            try:
                for position, url in todo:
                    done.put_nowait((position, await fetcher.fetch(url, scan_start)))
            except Exception as e:  # noqa: BLE001 - raised below, where results are read
                done.put_nowait(e)

        loops = [asyncio.create_task(fetch_in_turn()) for _ in range(min(concurrency, len(urls)))]
        try:
            for _ in urls:
                item = await done.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
