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
import contextlib
import ipaddress
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import aiohttp
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


def why_url_refused(url: str, allowed_ports: frozenset[int] | None) -> str | None:
    """None when ``url`` may be fetched; otherwise why not, in a few words."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"not a valid URL ({e})"
    if parts.scheme not in ("http", "https"):
        return "only http:// and https:// URLs can be scanned"
    if not parts.hostname:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None:
        return "URLs with a user name or password are not allowed"
    if _is_legacy_ipv4(parts.hostname):
        return f"{parts.hostname} is not a standard IP address; write it as four decimal numbers"
    port = port or (443 if parts.scheme == "https" else 80)
    if allowed_ports is not None and port not in allowed_ports:
        allowed = ", ".join(str(p) for p in sorted(allowed_ports))
        return f"port {port} is not allowed (allowed: {allowed})"
    return None


def _is_legacy_ipv4(host: str) -> bool:
    """True for numeric forms such as ``2130706433``, ``0x7f.1`` or ``127.1``.

    The C library reads these as addresses, so they would reach the resolver
    as names; refused here, the person learns why instead of seeing "blocked".
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
            raise TooLarge(f"more than {self.max_bytes} bytes received")
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
            raise TooLarge(f"body decodes to more than {self.max_bytes} bytes")

    def finish(self) -> None:
        if self._decoder is not None:
            self._count(len(self._decoder.flush(CHUNK_BYTES)))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


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
        return (
            "connect",
            f"could not connect to {exc.host}:{exc.port} ({exc.strerror or exc.os_error})",
        )
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError)):
        return "connect", f"the connection was closed or reset ({exc})"
    if isinstance(exc, aiohttp.ClientResponseError):
        # Raised by the parser: the server's answer is not HTTP we can read.
        return "other", f"not a valid HTTP answer: {' '.join(exc.message.split())}"
    return "other", f"{type(exc).__name__}: {exc}"


class _HostGates:
    """At most ``per_host`` fetches at once per scheme, host and port.

    aiohttp's own per-host limit would queue inside the fetch, where the wait
    would count toward the URL's deadline and timings. A gate is dropped when
    nobody holds or awaits it, so a long-lived worker keeps no gate per host
    it ever saw.
    """

    def __init__(self, per_host: int):
        self.per_host = per_host
        self._gates: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, url: str) -> AsyncIterator[None]:
        key = _host_key(url)
        gate, users = self._gates.get(key) or (asyncio.Semaphore(self.per_host), 0)
        self._gates[key] = (gate, users + 1)
        try:
            async with gate:
                yield
        finally:
            gate, users = self._gates[key]
            if users == 1:
                del self._gates[key]
            else:
                self._gates[key] = (gate, users - 1)

    def __len__(self) -> int:
        return len(self._gates)


def _host_key(url: str) -> str:
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port}"
    except ValueError:
        return ""


class Fetcher:
    """One session for many fetches: ``async with Fetcher(limits) as f: await f.fetch(...)``."""

    def __init__(self, limits: Limits, resolver: AbstractResolver | None = None):
        self.limits = limits
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._host_gates = _HostGates(limits.per_host)

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
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_socket(self, addr_info: tuple) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        reason = why_blocked(sockaddr[0], self.limits.allowed_networks)
        if reason is not None:
            raise BlockedAddress(reason)
        return socket.socket(family, type_, proto)

    async def fetch(self, url: str, scan_start: float, timeout_s: float | None = None) -> Fetched:
        """Fetches ``url``; ``scan_start`` is the ``time.monotonic()`` the scan began.

        Waiting for a free connection to the host comes first and counts
        toward neither the deadline nor the timings.
        """
        async with self._host_gates.slot(url):
            return await self._fetch_timed(url, scan_start, timeout_s or self.limits.timeout_s)

    async def _fetch_timed(self, url: str, scan_start: float, timeout_s: float) -> Fetched:
        started = time.monotonic()
        result = Fetched(url=url, start_ms=_ms(started - scan_start))
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                await self._follow(url, result, started)
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

    async def _follow(self, url: str, result: Fetched, started: float) -> None:
        assert self._session is not None, "use Fetcher as an async context manager"
        current = url
        for _ in range(self.limits.max_redirects + 1):
            refusal = why_url_refused(current, self.limits.allowed_ports)
            if refusal is not None:
                raise BlockedURL(refusal)
            async with self._session.get(current, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if response.status in REDIRECT_STATUSES and location:
                    current = str(response.url.join(URL(location)))
                    result.redirects += 1
                    continue
                result.ttfb_ms = _ms(time.monotonic() - started)
                result.http_status = response.status
                result.content_type = response.headers.get("Content-Type", "")[:200]
                result.final_url = str(response.url)
                await self._count_body(response, result)
                return
        raise TooManyRedirects(f"more than {self.limits.max_redirects} redirects")

    async def _count_body(self, response: aiohttp.ClientResponse, result: Fetched) -> None:
        counter = _BodyCounter(response.headers.get("Content-Encoding", ""), self.limits.max_bytes)
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            counter.feed(chunk)
        counter.finish()
        result.size, result.wire_size = counter.size, counter.wire_size


async def fetch_all(
    urls: Sequence[str], limits: Limits, concurrency: int
) -> AsyncIterator[tuple[int, Fetched]]:
    """Yields (position, result) for each URL the moment its fetch completes."""
    scan_start = time.monotonic()
    gate = asyncio.Semaphore(concurrency)
    async with Fetcher(limits) as fetcher:

        async def one(position: int, url: str) -> tuple[int, Fetched]:
            async with gate:
                return position, await fetcher.fetch(url, scan_start)

        for next_done in asyncio.as_completed([one(i, u) for i, u in enumerate(urls)]):
            yield await next_done
