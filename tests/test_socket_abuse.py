"""Hostile WebSocket clients on a real daphne: each is closed; pages beside it see everything."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from yarl import URL

from tests.client import Visitor, watch

BAD_MESSAGE = 4400
# Autobahn, under daphne, fails an oversized message by dropping the connection.
DROPPED = {aiohttp.WSCloseCode.ABNORMAL_CLOSURE, aiohttp.WSCloseCode.MESSAGE_TOO_BIG}
# daphne's default --websocket-max-message-size (and max frame size): 1 MiB.
DAPHNE_MAX_MESSAGE_BYTES = 1024 * 1024

GARBAGE = {
    "not JSON": "hello",
    "JSON but not an object": '["snapshot"]',
    "an object of another type": '{"type": "progress"}',
    "an object with no type": "{}",
    "deeply nested JSON": "[" * 100_000 + "]" * 100_000,
    "binary": b"\x00\xff\x00\xff",
}


async def send(ws: aiohttp.ClientWebSocketResponse, data: str | bytes) -> bool:
    """Sends ``data``; False if the server dropped the connection before it all went
    (daphne does, once a frame's header says it is over its limit)."""
    try:
        if isinstance(data, bytes):
            await ws.send_bytes(data)
        else:
            await ws.send_str(data)
    except ConnectionError:
        return False
    return True


async def close_code(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 10) -> int | None:
    """Reads (and drops) messages until the server closes the socket; returns its code."""
    async with asyncio.timeout(timeout_s):
        while True:
            message = await ws.receive()
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return ws.close_code
            if message.type == aiohttp.WSMsgType.ERROR:
                return ws.close_code


@pytest.mark.parametrize("data", GARBAGE.values(), ids=GARBAGE.keys())
async def test_a_socket_that_sends_garbage_is_closed_as_a_bad_message(server, target, data):
    async with Visitor(server.url) as visitor:
        scan_id = await visitor.submit([target.url("/size/10")])
        async with visitor.socket(scan_id) as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
            await send(ws, data)
            assert await close_code(ws) == BAD_MESSAGE


async def test_a_message_over_daphnes_limit_is_refused(server, target):
    async with Visitor(server.url) as visitor:
        scan_id = await visitor.submit([target.url("/size/10")])
        async with visitor.socket(scan_id) as ws:
            pad = "x" * DAPHNE_MAX_MESSAGE_BYTES
            # Dropped while it sent, or else right after: refused either way.
            if await send(ws, '{"type": "snapshot", "pad": "' + pad + '"}'):
                assert await close_code(ws) in DROPPED


async def test_a_socket_may_still_ask_for_a_snapshot(server, target):
    async with Visitor(server.url) as visitor:
        scan_id = await visitor.submit([target.url("/size/10")])
        async with visitor.socket(scan_id) as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
            await ws.send_json({"type": "snapshot"})
            again = await ws.receive_json(timeout=10)
            while again["type"] != "snapshot":
                again = await ws.receive_json(timeout=10)
            assert again["scan"]["id"] == scan_id


async def test_a_socket_without_an_origin_is_refused(server, target):
    async with Visitor(server.url) as visitor:
        scan_id = await visitor.submit([target.url("/size/10")])
        url = URL(server.url).with_scheme("ws") / "ws" / "scans" / scan_id / ""
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with visitor.session.ws_connect(url):
                pass
    assert refused.value.status == 403


async def abuse(visitor: Visitor, scan_id: str, data: str | bytes) -> int | None:
    async with visitor.socket(scan_id) as ws:
        if not await send(ws, data):
            return aiohttp.WSCloseCode.ABNORMAL_CLOSURE  # dropped while it sent
        return await close_code(ws)


async def test_abusive_sockets_on_a_scan_do_not_harm_the_page_watching_it(server, target):
    sizes = [100 + i for i in range(24)]
    urls = [target.url(f"/size/{size}?delay_ms=100") for size in sizes]
    huge = "x" * (2 * DAPHNE_MAX_MESSAGE_BYTES)
    async with Visitor(server.url) as visitor:
        scan_id = await visitor.submit(urls, concurrency=4)
        async with visitor.socket(scan_id) as watcher:
            garbage = [getattr(data, "values", [data])[0] for data in GARBAGE.values()]
            abusers = [abuse(visitor, scan_id, data) for data in [*garbage, huge] * 2]
            watched, codes = await asyncio.gather(
                watch(watcher, total=len(urls)), asyncio.gather(*abusers)
            )
    _, results = watched
    assert [results[i]["size"] for i in range(len(urls))] == sizes
    # Each was shut out (with which code, the tests above say).
    assert None not in codes
