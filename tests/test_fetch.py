"""The fetcher alone against the local target site: what it measures and how it ends."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import socket
import time
import zlib
from dataclasses import replace

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from scans.fetch import Fetched, Fetcher, Limits, fetch_all
from tests.target import body_of

LOOPBACK = Limits(
    timeout_s=10,
    allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),),
    allowed_ports=None,
)


async def fetch(url: str, limits: Limits = LOOPBACK, resolver=None, **kwargs) -> Fetched:
    async with Fetcher(limits, resolver=resolver) as fetcher:
        return await fetcher.fetch(url, time.monotonic(), **kwargs)


async def fetch_every(urls: list[str], limits: Limits = LOOPBACK) -> list[tuple[int, Fetched]]:
    return [pair async for pair in fetch_all(urls, limits, concurrency=len(urls))]


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 65_537, 1_000_000])
async def test_it_counts_every_byte_of_a_plain_body(target, size):
    result = await fetch(target.url(f"/size/{size}"))
    assert result.error is None, result.error_message
    assert (result.http_status, result.size, result.wire_size) == (200, size, size)
    assert result.content_type.startswith("text/plain")
    assert result.final_url == target.url(f"/size/{size}")
    assert result.redirects == 0


async def test_a_gzip_body_counts_decoded_bytes_as_size_and_received_bytes_as_wire_size(target):
    result = await fetch(target.url("/gzip/100000"))
    assert result.size == 100_000
    assert result.wire_size == len(gzip.compress(body_of(100_000)))
    assert result.wire_size < result.size


@pytest.mark.parametrize("raw", [False, True], ids=["zlib", "raw"])
async def test_a_deflate_body_is_decoded_with_or_without_its_zlib_header(target, raw):
    result = await fetch(target.url(f"/deflate/50000{'?raw=1' if raw else ''}"))
    wbits = -zlib.MAX_WBITS if raw else zlib.MAX_WBITS
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    wire = compressor.compress(body_of(50_000)) + compressor.flush()
    assert (result.error, result.size, result.wire_size) == (None, 50_000, len(wire))


async def test_a_slow_page_takes_at_least_its_delay_and_ttfb_comes_first(target):
    result = await fetch(target.url("/size/10?delay_ms=300"))
    assert 300 <= result.ttfb_ms <= result.elapsed_ms < 3000


async def test_start_ms_is_the_offset_from_the_start_of_the_scan(target):
    async with Fetcher(LOOPBACK) as fetcher:
        result = await fetcher.fetch(target.url("/size/10"), scan_start=time.monotonic() - 1.5)
    assert 1500 <= result.start_ms < 2500


async def test_it_follows_redirects_and_counts_them(target):
    result = await fetch(target.url("/redirect/3"))
    assert (result.error, result.http_status, result.size) == (None, 200, 1000)
    assert result.redirects == 3
    assert result.final_url == target.url("/size/1000")


@pytest.mark.parametrize("code", [404, 500, 503])
async def test_an_error_status_is_an_answer_not_an_error(target, code):
    result = await fetch(target.url(f"/status/{code}?size=7"))
    assert (result.error, result.http_status, result.size) == (None, code, 7)


class NoSuchHost(AbstractResolver):
    """Answers as the system resolver does for a name that does not exist.

    A real lookup of a .invalid name would send a query to this machine's DNS
    server, which is not on the loopback network.
    """

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        pass


async def test_a_host_that_does_not_resolve_is_a_dns_error():
    result = await fetch("http://no-such-host.invalid/", resolver=NoSuchHost())
    assert result.error == "dns"
    assert result.error_message == "could not resolve no-such-host.invalid"
    assert result.http_status is None and result.size is None


async def test_a_name_the_system_resolver_refuses_is_a_dns_error():
    # The C library refuses a label that starts with "-" before asking any DNS server.
    result = await fetch("http://-no-such-host-.invalid/")
    assert result.error == "dns"
    assert result.error_message == "could not resolve -no-such-host-.invalid"


async def test_fetch_all_yields_each_url_the_moment_it_is_done(target):
    urls = [target.url("/size/10?delay_ms=600"), target.url("/size/20")]
    order = [position for position, _ in await fetch_every(urls)]
    assert order == [1, 0]


async def test_no_more_than_per_host_fetches_run_at_once_and_waiting_is_not_timed(target):
    urls = [target.url(f"/size/{i}?delay_ms=300") for i in range(6)]
    started = time.monotonic()
    results = [r for _, r in await fetch_every(urls, replace(LOOPBACK, per_host=2))]
    wall_ms = (time.monotonic() - started) * 1000
    assert all(r.error is None for r in results)
    # Three waves of two, and each URL's own time is one delay, not its wait.
    assert wall_ms >= 900
    assert all(300 <= r.elapsed_ms < 600 for r in results)
    waves = sorted(round(r.start_ms / 300) for r in results)
    assert waves == [0, 0, 1, 1, 2, 2]


async def test_a_waiting_url_does_not_spend_its_deadline_in_the_queue(target):
    urls = [target.url(f"/size/{i}?delay_ms=400") for i in range(3)]
    limits = replace(LOOPBACK, per_host=1, timeout_s=1.0)
    results = [r for _, r in await fetch_every(urls, limits)]
    assert [r.error for r in results] == [None, None, None]


async def test_the_fetcher_keeps_no_gate_for_hosts_it_is_done_with(target):
    async with Fetcher(LOOPBACK) as fetcher:
        await asyncio.gather(*(fetcher.fetch(target.url(f"/size/{i}"), 0) for i in range(5)))
        assert len(fetcher._host_gates) == 0


async def test_a_fetch_that_waits_for_its_host_says_so_and_when_it_starts(target):
    told: dict[str, list] = {"first": [], "second": []}
    async with Fetcher(replace(LOOPBACK, per_host=1)) as fetcher:
        scan_start = time.monotonic()
        url = target.url("/size/1?delay_ms=200")
        first, second = await asyncio.gather(
            fetcher.fetch(url, scan_start, waits=told["first"].append),
            fetcher.fetch(url, scan_start, waits=told["second"].append),
        )
    # The first had its slot at once: nothing to tell.
    assert told["first"] == []
    assert told["second"][0] is None and len(told["second"]) == 2
    # It starts as the first ends, and that is the start its result shows.
    assert told["second"][1] == second.start_ms
    assert first.start_ms + first.elapsed_ms <= second.start_ms < first.start_ms + 400


async def test_a_fetch_cancelled_while_it_waits_for_its_host_leaves_no_slot_behind(target):
    async with Fetcher(replace(LOOPBACK, per_host=1)) as fetcher:
        first = asyncio.create_task(fetcher.fetch(target.url("/size/1?delay_ms=300"), 0))
        waiting = asyncio.create_task(fetcher.fetch(target.url("/size/2"), 0))
        await asyncio.sleep(0.1)
        waiting.cancel()
        started = time.monotonic()
        last = await fetcher.fetch(target.url("/size/3"), 0)
        waited_ms = (time.monotonic() - started) * 1000
        assert (await first).size == 1
        assert waiting.cancelled()
        # The third waits for the first only, then takes the one slot.
        assert (last.error, last.size) == (None, 3)
        assert 100 <= waited_ms < 600
        assert len(fetcher._host_gates) == 0


async def test_a_host_slot_handed_to_a_fetch_as_it_is_cancelled_goes_to_the_next(target):
    async with Fetcher(replace(LOOPBACK, per_host=1)) as fetcher:
        gates = fetcher._host_gates
        holder = gates.slot(("http", "127.0.0.1", target.port))
        await holder.__aenter__()
        url = target.url("/size/4")
        handed = asyncio.create_task(fetcher.fetch(url, 0))
        after = asyncio.create_task(fetcher.fetch(url, 0))
        await asyncio.sleep(0.05)
        # The holder's slot goes to the first waiter, which is cancelled before it runs.
        await holder.__aexit__(None, None, None)
        handed.cancel()
        result = await asyncio.wait_for(after, 5)
        assert handed.cancelled()
        assert (result.error, result.size) == (None, 4)
        assert len(gates) == 0


async def test_leaving_fetch_all_early_stops_the_fetches_still_running(target):
    urls = [target.url("/size/1"), *(target.url(f"/size/{i}?delay_ms=3000") for i in range(3))]
    started = time.monotonic()
    results = fetch_all(urls, LOOPBACK, concurrency=len(urls))
    position, result = await anext(results)
    await results.aclose()
    assert (position, result.size) == (0, 1)
    assert time.monotonic() - started < 1
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def later(delay_s: float, work):
    await asyncio.sleep(delay_s)
    return await work


async def test_fetches_given_different_timeouts_each_end_at_their_own(target):
    never = target.url("/never")
    async with Fetcher(LOOPBACK) as fetcher:
        fetches = asyncio.gather(
            fetcher.fetch(never, 0, timeout_s=1.2),
            later(0.1, fetcher.fetch(never, 0, timeout_s=0.4)),
            later(0.2, fetcher.fetch(never, 0, timeout_s=0.4)),
            fetcher.fetch(target.url("/size/5"), 0, timeout_s=0.4),
        )
        results = await asyncio.wait_for(fetches, 5)
        assert len(fetcher._deadlines) == 0
    assert [r.error for r in results] == ["timeout", "timeout", "timeout", None]
    assert results[1].error_message == "no complete answer within 0.4 s"
    for result, timeout_s in zip(results[:3], [1.2, 0.4, 0.4], strict=True):
        assert timeout_s * 1000 <= result.elapsed_ms < timeout_s * 1000 + 500


async def test_a_fetch_cancelled_from_outside_is_cancelled_not_timed_out(target):
    async with Fetcher(LOOPBACK) as fetcher:
        cancelled = asyncio.create_task(fetcher.fetch(target.url("/never"), 0, timeout_s=0.3))
        await asyncio.sleep(0.1)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert len(fetcher._deadlines) == 0
        after = await fetcher.fetch(target.url("/never"), 0, timeout_s=0.3)
    assert (after.error, after.error_message) == ("timeout", "no complete answer within 0.3 s")
