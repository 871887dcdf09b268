"""Hostile servers: each ends as its own error, memory stays flat, the rest of the scan goes on."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest

from scans.fetch import Fetched, Fetcher, Limits, fetch_all
from tests.client import Visitor, watch
from tests.conftest import ROOT

MIB = 1024 * 1024
LOOPBACK = Limits(
    timeout_s=1.5,
    connect_timeout_s=0.5,
    max_bytes=5 * MIB,
    allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),),
    allowed_ports=None,
)

# (name, path or a function of the target giving the URL, error class, words of the message)
HOSTILE = [
    ("endless body", "/endless", "too_large", "more than 5 MiB received"),
    ("a byte a second", "/trickle", "timeout", "no complete answer within 1.5 s"),
    ("gzip bomb", "/gzip-bomb", "too_large", "decodes to more than 5 MiB"),
    ("redirect loop", "/loop", "too_many_redirects", "more than 10 redirects"),
    (
        "redirect to a blocked address",
        lambda t: t.url(f"/redirect-to?url=http://127.0.0.2:{t.port}/"),
        "blocked",
        "127.0.0.2 is a loopback address",
    ),
    (
        "redirect to another scheme",
        lambda t: t.url("/redirect-to?url=file:///etc/passwd"),
        "blocked",
        "only http:// and https://",
    ),
    ("headers that never come", "/never", "timeout", "no complete answer within 1.5 s"),
    ("headers that never end", "/endless-headers", "other", "Too many headers"),
    ("reset connection", "/reset", "connect", "closed or reset"),
    (
        "untrusted certificate",
        lambda t: t.tls_url("/size/10"),
        "tls",
        "not valid: self-signed certificate",
    ),
    ("TLS to a plain HTTP port", lambda t: t.url("/size/10").replace("http:", "https:"), "tls", ""),
    ("not HTTP at all", "/bad-status-line", "other", "not a valid HTTP answer"),
]


def hostile_url(target, where) -> str:
    return where(target) if callable(where) else target.url(where)


@pytest.mark.parametrize(
    "where, error, words", [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE]
)
async def test_each_hostile_page_ends_as_its_own_error(target, where, error, words):
    async with Fetcher(LOOPBACK) as fetcher:
        result = await fetcher.fetch(hostile_url(target, where), time.monotonic())
    assert (result.error, result.size, result.wire_size) == (error, None, None)
    assert words in result.error_message
    assert result.elapsed_ms < 3000


async def test_a_trickle_is_stopped_by_the_deadline_though_bytes_keep_coming(target):
    async with Fetcher(LOOPBACK) as fetcher:
        result = await fetcher.fetch(target.url("/trickle?every_s=0.1"), time.monotonic())
    assert result.error == "timeout"
    assert result.http_status == 200 and result.ttfb_ms < 500
    assert 1500 <= result.elapsed_ms < 2500


@contextmanager
def full_listener() -> Iterator[int]:
    """A port whose accept queue is full, so a new connection never completes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
    try:
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


async def test_a_closed_port_is_a_connect_error_in_the_systems_words():
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        async with Fetcher(LOOPBACK) as fetcher:
            result = await fetcher.fetch(f"http://127.0.0.1:{port}/", time.monotonic())
    assert result.error == "connect"
    assert result.error_message == f"could not connect to 127.0.0.1:{port} (Connection refused)"


async def test_a_server_that_never_accepts_ends_at_the_connect_timeout(target):
    with full_listener() as port:
        await asyncio.sleep(0.1)
        async with Fetcher(replace(LOOPBACK, timeout_s=10)) as fetcher:
            result = await fetcher.fetch(f"http://127.0.0.1:{port}/", time.monotonic())
    assert result.error == "timeout"
    assert result.error_message == "could not connect within 0.5 s"
    assert result.elapsed_ms < 2000


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Resets VmHWM, the kernel's record of peak resident memory, where allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


async def peak_rss_growth(work: Awaitable) -> tuple[object, int]:
    """Runs ``work``; returns (its result, how far resident memory rose above the start).

    The kernel's peak record sees a spike that no sampler would, such as one
    zlib call inflating a bomb at once; a sampling thread stands in where the
    record cannot be reset.
    """
    before = peak = _status_bytes("VmRSS")
    exact = _reset_peak()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.001):
            peak = max(peak, _status_bytes("VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = await work
    finally:
        stop.set()
        sampler.join()
    if exact:
        peak = max(peak, _status_bytes("VmHWM"))
    return result, peak - before


@pytest.mark.parametrize("path", ["/endless", "/gzip-bomb"])
async def test_memory_stays_flat_while_a_huge_body_streams_past(target, path):
    # A limit far above the bound: holding the body would need 256 MiB.
    limits = replace(LOOPBACK, max_bytes=256 * MIB, timeout_s=20)
    async with Fetcher(limits) as fetcher:
        result, growth = await peak_rss_growth(fetcher.fetch(target.url(path), time.monotonic()))
    assert result.error == "too_large"
    assert growth < 48 * MIB, f"resident memory grew by {growth / MIB:.0f} MiB"


async def test_the_rest_of_a_scan_completes_beside_every_hostile_page(target):
    hostile = [hostile_url(target, case[1]) for case in HOSTILE]
    good = [target.url(f"/size/{1000 + i}") for i in range(10)]
    started = time.monotonic()
    done: list[tuple[int, Fetched, float]] = []
    async for position, result in fetch_all(hostile + good, LOOPBACK, concurrency=50):
        done.append((position, result, time.monotonic() - started))
    by_position = {position: result for position, result, _ in done}

    assert [by_position[i].error for i in range(len(HOSTILE))] == [c[2] for c in HOSTILE]
    good_results = [by_position[len(hostile) + i] for i in range(len(good))]
    assert [r.size for r in good_results] == [1000 + i for i in range(10)]
    assert all(r.error is None for r in good_results)
    # The good pages are not held up behind the ones that run into the deadline.
    good_done_s = [at for position, _, at in done if position >= len(hostile)]
    assert max(good_done_s) < 1.0


async def test_a_fetched_site_cannot_put_script_in_our_pages(server, target):
    script = '<script>alert("x")</script>'
    urls = [
        target.url(f"/redirect-to?url=/size/5?q='\">{script}"),
        target.url("/bad-status-line"),
        target.url(f'/content-type?value=text/html">{script}'),
    ]
    async with Visitor(server.url) as visitor, Visitor(server.url) as staff:
        scan_id = await visitor.submit(urls)
        async with visitor.socket(scan_id) as ws:
            _, results = await watch(ws, total=len(urls))
        page = await get_text(visitor, f"/scans/{scan_id}/")
        await log_in_as_staff(staff, server)
        admin_page = await get_text(staff, f"/admin/scans/scan/{scan_id}/change/")

    # The site's words arrive as data, whole ...
    assert results[0]["final_url"].startswith(target.url("/size/5?q="))
    assert '<script>alert("status")</script>' in results[1]["error_message"]
    assert results[2]["content_type"] == f'text/html">{script}'
    # ... and our pages show them as text, never as markup.
    for html in (page, admin_page):
        assert "<script>alert" not in html
        assert "&lt;script&gt;alert(&quot;status&quot;)&lt;/script&gt;" in html
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html


async def get_text(visitor: Visitor, path: str) -> str:
    async with visitor.session.get(visitor.base_url + path) as response:
        assert response.status == 200, path
        return await response.text()


async def log_in_as_staff(visitor: Visitor, server) -> None:
    name, password = f"staff-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    command = [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", name]
    env = {**server.env, "DJANGO_SUPERUSER_PASSWORD": password}
    subprocess.run([*command, "--email", f"{name}@example.com"], cwd=ROOT, env=env, check=True)
    page = await get_text(visitor, "/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = {"csrfmiddlewaretoken": token, "username": name, "password": password, "next": "/admin/"}
    async with visitor.session.post(
        server.url + "/admin/login/", data=form, allow_redirects=False
    ) as response:
        assert response.status == 302, await response.text()
