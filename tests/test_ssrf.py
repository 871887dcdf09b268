"""The SSRF guard at the socket, through redirects, rebinding and proxies, and in the form.

No test here ever connects beyond this machine's loopback. Private and public
ranges are covered by calling the check itself (tests/test_addresses.py).
Every address the guard must refuse has a listening socket here, and a
connection that got through would wait in its accept queue to be counted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections.abc import Iterator

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scans.fetch import Fetcher, Limits, _why_text_refused, why_url_refused
from tests.client import Visitor, watch
from tests.conftest import Server, migrate, project_env

LOOPBACK = Limits(
    timeout_s=5,
    allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),),
    allowed_ports=None,
    dns_cache_s=0,
)
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "WS_PROXY", "WSS_PROXY")


class Trap:
    """Listening sockets on one port that nothing may connect to; never accepts by itself."""

    def __init__(self, hosts: tuple[str, ...], port: int = 0):
        for _ in range(20):
            try:
                self.sockets = self._bind(hosts, port)
                return
            except OSError:
                if port:
                    raise
        raise RuntimeError(f"no port free on all of {hosts}")

    @staticmethod
    def _bind(hosts: tuple[str, ...], port: int) -> list[socket.socket]:
        sockets: list[socket.socket] = []
        try:
            for host in hosts:
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
                sockets.append(sock)
                sock.bind((host, port))
                sock.listen(16)
                sock.setblocking(False)
                port = sock.getsockname()[1]
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    @property
    def port(self) -> int:
        return self.sockets[0].getsockname()[1]

    def connections(self) -> list[str]:
        """Who connected so far, as "listening address <- peer"."""
        seen = []
        for sock in self.sockets:
            while True:
                try:
                    conn, peer = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                seen.append(f"{sock.getsockname()[0]} <- {peer[0]}")
        return seen

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def trap_127_0_0_2(target) -> Iterator[Trap]:
    """127.0.0.2 on the target's own port: where a rebound name would lead."""
    trap = Trap(("127.0.0.2",), port=target.port)
    yield trap
    trap.close()


class ScriptedResolver(AbstractResolver):
    """Each call gives the next list of ``answers``: a name that rebinds."""

    def __init__(self, *answers: list[str]):
        self.answers = list(answers)
        self.calls = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


async def test_a_name_that_rebinds_is_connected_to_where_it_was_checked(target, trap_127_0_0_2):
    # 127.0.0.1 stands in for a public address; 127.0.0.2 for the private one.
    resolver = ScriptedResolver(["127.0.0.1"], ["127.0.0.2"])
    url = f"http://rebinding.test:{target.port}/size/10"
    async with Fetcher(LOOPBACK, resolver=resolver) as fetcher:
        first = await fetcher.fetch(url, time.monotonic())
    # Resolved once: the address checked is the address connected to.
    assert (first.error, first.size, resolver.calls) == (None, 10, 1)

    async with Fetcher(LOOPBACK, resolver=resolver) as fetcher:
        second = await fetcher.fetch(url, time.monotonic())
    assert second.error == "blocked"
    assert second.error_message == (
        "rebinding.test resolves to a blocked address: 127.0.0.2 is a loopback address"
    )
    await asyncio.sleep(0.05)
    assert trap_127_0_0_2.connections() == []


async def test_blocked_answers_are_dropped_and_the_allowed_one_used(target, trap_127_0_0_2):
    resolver = ScriptedResolver(["127.0.0.2", "::1", "127.0.0.1"])
    async with Fetcher(LOOPBACK, resolver=resolver) as fetcher:
        result = await fetcher.fetch(f"http://mixed.test:{target.port}/size/3", time.monotonic())
    assert (result.error, result.size) == (None, 3)
    assert trap_127_0_0_2.connections() == []


async def test_a_name_with_no_answers_fails_closed(target):
    async with Fetcher(LOOPBACK, resolver=ScriptedResolver([])) as fetcher:
        result = await fetcher.fetch(f"http://empty.test:{target.port}/", time.monotonic())
    assert result.error == "dns"


async def test_proxy_variables_are_ignored_by_the_fetcher(target, monkeypatch):
    trap = Trap(("127.0.0.1",))
    try:
        for name in PROXY_VARIABLES:
            monkeypatch.setenv(name, f"http://127.0.0.1:{trap.port}")
            monkeypatch.setenv(name.lower(), f"http://127.0.0.1:{trap.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with Fetcher(LOOPBACK) as fetcher:
            result = await fetcher.fetch(target.url("/size/4"), time.monotonic())
        assert (result.error, result.size) == (None, 4)
        assert trap.connections() == []
    finally:
        trap.close()


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://user:secret@example.com/", "user name or password"),
        ("http://user@example.com/", "user name or password"),
        ("ftp://example.com/", "only http:// and https://"),
        ("file:///etc/passwd", "only http:// and https://"),
        ("javascript:alert(1)", "only http:// and https://"),
        ("gopher://127.0.0.1:6379/_INFO", "only http:// and https://"),
        ("http://example.com:6379/", "port 6379 is not allowed (allowed: 80, 443)"),
        ("http://2130706433/", "not a standard IP address"),
        ("http://0x7f000001/", "not a standard IP address"),
        ("http://127.1/", "not a standard IP address"),
        ("http://017700000001/", "not a standard IP address"),
        ("http:///path", "no host"),
        ("https://:80/", "the URL has no host"),
        ("example.com/page", "write one of them in front"),
        ("http://exa mple.com/", "the host name 'exa mple.com' has a space in it"),
        ("http://:8080", "the URL has no host"),
        ("http://[::1/", "not a valid URL"),
    ],
)
def test_it_refuses_urls_that_are_not_plain_http_to_an_allowed_port(url, reason):
    assert reason in why_url_refused(url, frozenset({80, 443}))


@pytest.mark.parametrize(
    "url",
    ["http://example.com/", "https://example.com:443/a?b=c", "http://cafe.be/", "http://1.2.3.4/"],
)
def test_it_lets_plain_http_urls_through(url):
    assert why_url_refused(url, frozenset({80, 443})) is None


# URLs built from the pieces that make the plain shape's reading go wrong if it is wrong:
# case, user names, brackets, backslashes, tabs, odd ports, numeric and non-ASCII hosts.
_hosts = st.sampled_from(
    ["example.com", "EXAMPLE.com", "127.0.0.1", "127.1", "2130706433", "0x7f.1", "a..b", "-",
     "127.0.0.1.", "[::1]", "[::1", "ex\\ample.com", "ex\tample.com", "café.fr", "", "@", "a@b"]
)  # fmt: skip
_ports = st.sampled_from(["", ":", ":80", ":443", ":8080", ":0", ":080", ":65535", ":65536",
                          ":99999", ":123456", ":8o", ":+80"])  # fmt: skip
_rests = st.sampled_from(["", "/", "/a?b=c", "?q", "#f", "\\x", "\t/", "@evil/", ":1/", " /"])


@settings(max_examples=500)
@given(
    st.sampled_from(["http", "https", "HTTP", "hTTps", "ftp", "httpx", ""]),
    st.sampled_from(["://", ":/", ":"]),
    _hosts,
    _ports,
    _rests,
    st.sampled_from([frozenset({80, 443}), frozenset({8080}), None]),
)
@example("http", "://", "example.com", ":65536", "/", None)
def test_the_plain_shape_is_read_as_yarl_reads_it(scheme, slashes, host, port, rest, ports):
    url = f"{scheme}{slashes}{host}{port}{rest}"
    assert why_url_refused(url, ports) == _why_text_refused(url, ports)


# End to end: a real daphne whose worker fetches, allowed 127.0.0.1/32 only.


@pytest.fixture(scope="module")
def traps() -> Iterator[dict[str, Trap]]:
    blocked = Trap(("127.0.0.2", "127.0.0.1", "::1"))
    proxy = Trap(("127.0.0.1",))
    yield {"blocked": blocked, "proxy": proxy}
    blocked.close()
    proxy.close()


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory, target, traps) -> Iterator[Server]:
    """Ports 80, 443 and the ones the tests use; every proxy variable points at a trap."""
    tmp_path = tmp_path_factory.mktemp("ssrf")
    proxy = f"http://127.0.0.1:{traps['proxy'].port}"
    env = project_env(
        tmp_path,
        SCANS_ALLOWED_NETWORKS="127.0.0.1/32",
        SCANS_ALLOWED_PORTS=f"80,443,{target.port},{target.tls_port},{traps['blocked'].port}",
        SCANS_MAX_ACTIVE_PER_OWNER="2",
        NO_PROXY="",
        no_proxy="",
        **{name: proxy for name in PROXY_VARIABLES},
        **{name.lower(): proxy for name in PROXY_VARIABLES},
    )
    migrate(env)
    server = Server(env, tmp_path / "daphne.log").start()
    yield server
    server.stop()


async def test_loopback_forms_outside_the_allowed_network_are_blocked(
    guarded_server, target, traps
):
    port = traps["blocked"].port
    expected = {
        f"http://127.0.0.2:{port}/": "127.0.0.2 is a loopback address",
        f"http://[::1]:{port}/": "::1 is the loopback address",
        f"http://0.0.0.0:{port}/": "0.0.0.0 is an unspecified",
        f"http://[::]:{port}/": ":: is the unspecified address",
        f"http://[::ffff:127.0.0.2]:{port}/": "maps to 127.0.0.2, a loopback address",
        target.url(f"/redirect-to?url=http://127.0.0.2:{port}/"): "127.0.0.2 is a loopback",
    }
    urls = [*expected, target.url("/size/12")]
    async with Visitor(guarded_server.url) as visitor:
        scan_id = await visitor.submit(urls)
        async with visitor.socket(scan_id) as ws:
            _, results = await watch(ws, total=len(urls))

    for position, (url, reason) in enumerate(expected.items()):
        assert results[position]["error"] == "blocked", url
        assert reason in results[position]["error_message"], url
    # The rest of the scan is not held back.
    assert (results[len(expected)]["state"], results[len(expected)]["size"]) == ("ok", 12)
    await asyncio.sleep(0.05)
    assert traps["blocked"].connections() == []


async def test_proxy_variables_are_ignored_by_the_server(guarded_server, target, traps):
    async with Visitor(guarded_server.url) as visitor:
        scan_id = await visitor.submit([target.url("/size/5"), target.tls_url("/size/5")])
        async with visitor.socket(scan_id) as ws:
            _, results = await watch(ws, total=2)
    assert (results[0]["state"], results[0]["size"]) == ("ok", 5)
    assert results[1]["error"] == "tls"
    assert traps["proxy"].connections() == []


async def post_form(visitor: Visitor, urls: list[str]) -> tuple[int, str]:
    async with visitor.session.get(visitor.base_url + "/") as response:
        token = csrf_token(await response.text())
    form = {"csrfmiddlewaretoken": token, "urls": "\n".join(urls), "concurrency": "2"}
    form["timeout"] = "5"
    async with visitor.session.post(
        visitor.base_url + "/", data=form, allow_redirects=False
    ) as response:
        return response.status, await response.text()


def csrf_token(page: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)


def error_items(page: str) -> list[str]:
    found = re.search(r'<ul class="errors" id="urls-errors">(.*?)</ul>', page, re.S)
    return re.findall(r"<li>(.*?)</li>", found.group(1), re.S) if found else []


async def test_the_form_names_each_line_it_refuses_and_why(guarded_server):
    lines = [
        "http://127.0.0.1/",
        "http://user:pass@127.0.0.1/",
        "ftp://127.0.0.1/",
        "http://127.0.0.1:8080/",
        "https://127.0.0.1:443/",
        "file:///etc/passwd",
        "http://2130706433/",
    ]
    async with Visitor(guarded_server.url) as visitor:
        status, page = await post_form(visitor, lines)
    assert status == 400
    items = error_items(page)
    assert items[0] == "Fix lines 2, 3, 4, 6 and 7 of the list:"
    assert items[1].startswith("Line 2: ") and "user name or password" in items[1]
    assert items[2].startswith("Line 3: ") and "only http:// and https://" in items[2]
    assert items[3].startswith("Line 4: ") and "port 8080 is not allowed" in items[3]
    assert items[4].startswith("Line 6: ") and "only http:// and https://" in items[4]
    assert items[5].startswith("Line 7: ") and "not a standard IP address" in items[5]
    assert len(items) == 6


async def test_the_next_scan_over_the_active_limit_is_refused_until_one_ends(
    guarded_server, target
):
    # SCANS_MAX_ACTIVE_PER_OWNER=2 on this server.
    never = [target.url("/never")]
    async with Visitor(guarded_server.url) as owner, Visitor(guarded_server.url) as other:
        first = await owner.submit(never, timeout=30)
        await owner.submit(never, timeout=30)
        status, page = await post_form(owner, never)
        assert status == 400
        assert "You already have 2 scans running" in page
        # Another visitor has a limit of their own.
        assert (await post_form(other, [target.url("/size/1")]))[0] == 302
        await cancel(owner, first)
        assert (await post_form(owner, [target.url("/size/1")]))[0] == 302


async def cancel(visitor: Visitor, scan_id: str) -> None:
    detail = f"{visitor.base_url}/scans/{scan_id}/"
    async with visitor.session.get(detail) as response:
        token = csrf_token(await response.text())
    async with visitor.session.post(
        f"{detail}cancel/", data={"csrfmiddlewaretoken": token}, allow_redirects=False
    ) as response:
        assert response.status == 302
