"""The whole path over real sockets: form → daphne → worker → WebSocket, against the target site."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.client import Visitor, watch
from tests.target import body_of

SIZES = [0, 1, 100, 1000, 4096, 65_536, 65_537, 300_000, 1_048_576]


def sized_urls(target, count: int, delay_ms: int = 0) -> tuple[list[str], list[int]]:
    sizes = [SIZES[i % len(SIZES)] + i for i in range(count)]
    urls = [target.url(f"/size/{size}?delay_ms={delay_ms}") for size in sizes]
    return urls, sizes


async def test_it_shows_every_result_live_with_the_right_size(server, target):
    urls, sizes = sized_urls(target, 30, delay_ms=50)
    urls.append(target.url("/status/404?size=7"))
    urls.append("http://-no-such-host-.invalid/")
    async with Visitor(server.url) as visitor:
        scan_id = await visitor.submit(urls, concurrency=5)
        async with visitor.socket(scan_id) as ws:
            messages, results = await watch(ws, total=len(urls))

    assert messages[0]["type"] == "snapshot"
    assert [m["type"] for m in messages[1:]] == ["progress"] * (len(messages) - 1)
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert [results[i]["size"] for i in range(len(sizes))] == sizes
    assert results[30]["state"] == "ok" and results[30]["http_status"] == 404
    assert results[31]["state"] == "error" and results[31]["error"] == "dns"
    final = messages[-1]["scan"]
    assert final["status"] == "done" and final["done"] == len(urls)
    assert final["total_bytes"] == sum(sizes) + 7
    assert final["wall_ms"] > 0 and final["sum_ms"] > final["wall_ms"]


async def test_it_never_shows_a_result_twice_or_misses_one(server, target):
    urls, sizes = sized_urls(target, 60, delay_ms=40)
    async with Visitor(server.url) as visitor:
        scan_id = await visitor.submit(urls, concurrency=4)
        async with visitor.socket(scan_id) as ws:
            messages, _ = await watch(ws, total=len(urls))
    progressed = [r["position"] for m in messages[1:] for r in m["results"]]
    assert sorted(progressed) == sorted(set(progressed))
    snapshot_done = {r["position"] for r in messages[0]["results"] if r["state"] != "pending"}
    assert snapshot_done.isdisjoint(progressed)
    assert snapshot_done | set(progressed) == set(range(len(urls)))


async def test_a_second_page_opened_halfway_sees_everything(server, target):
    urls, sizes = sized_urls(target, 40, delay_ms=100)
    async with Visitor(server.url) as visitor:
        scan_id = await visitor.submit(urls, concurrency=4)
        async with visitor.socket(scan_id) as first:
            seen_first = 0
            while seen_first < len(urls) // 2:
                message = await first.receive_json(timeout=30)
                seen_first += sum(r["state"] != "pending" for r in message["results"])
            async with visitor.socket(scan_id) as second:
                messages, results = await watch(second, total=len(urls))
    assert messages[0]["type"] == "snapshot"
    halfway = sum(r["state"] != "pending" for r in messages[0]["results"])
    assert len(urls) // 2 <= halfway < len(urls)
    assert [results[i]["size"] for i in range(len(urls))] == sizes


async def test_the_seed_point_20_slow_sites_take_little_more_than_one(server, target):
    urls = [target.url(f"/size/{1000 + i}?delay_ms=300") for i in range(20)]
    async with Visitor(server.url) as visitor:
        scan_id = await visitor.submit(urls, concurrency=20)
        async with visitor.socket(scan_id) as ws:
            messages, results = await watch(ws, total=20)
    scan = messages[-1]["scan"]
    assert all(r["elapsed_ms"] >= 300 for r in results.values())
    assert scan["sum_ms"] >= 20 * 300
    # Fetched one after another this would take 6 s; concurrently, about one delay.
    assert scan["wall_ms"] < 20 * 300 / 4


async def test_another_visitor_cannot_see_the_scan(server, target):
    async with Visitor(server.url) as owner, Visitor(server.url) as stranger:
        scan_id = await owner.submit([target.url("/size/10")])
        async with stranger.session.get(f"{server.url}/scans/{scan_id}/") as response:
            assert response.status == 404
        async with stranger.session.get(f"{server.url}/api/scans/{scan_id}/") as response:
            assert response.status == 404
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with stranger.socket(scan_id):
                pass
        assert refused.value.status == 403
        async with owner.socket(scan_id) as ws:
            first = await ws.receive_json(timeout=10)
        assert first["type"] == "snapshot" and first["scan"]["id"] == scan_id


async def test_a_socket_from_another_origin_is_refused(server, target):
    async with Visitor(server.url) as visitor:
        scan_id = await visitor.submit([target.url("/size/10")])
        with pytest.raises(aiohttp.WSServerHandshakeError):
            async with visitor.socket(scan_id, origin="http://evil.example"):
                pass


async def test_the_page_reloaded_mid_scan_shows_what_is_done(server, target):
    urls = [target.url(f"/size/{100 + i}?delay_ms={100 * (i % 4)}") for i in range(8)]
    async with Visitor(server.url) as visitor:
        scan_id = await visitor.submit(urls, concurrency=8)
        await asyncio.sleep(0.25)
        async with visitor.session.get(f"{server.url}/scans/{scan_id}/") as response:
            page = await response.text()
        assert response.status == 200
        assert page.count('class="state-ok"') >= 2
        assert body_of(3)  # the target serves pages made of this text
