"""Sockets of one process on one scan share one member of its group: real sockets on the
in-memory layer, and the relay itself on the Redis that runs on this machine (pub/sub, as
the progress layer is there)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as redis
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer

from scans.announcer import PROGRESS_LAYER, announce, group_name
from scans.relay import Relay, relay_of_this_loop
from tests.conftest import IN_CI
from tests.processes import free_port, wait_for_port
from tests.test_consumer import communicator, make_scan, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def progress(seq: int) -> dict:
    return {"seq": seq, "scan": {}, "results": []}


async def open_page(scan_id, cookie: str):
    """A page's socket, connected, its first snapshot read."""
    page = communicator(scan_id, cookie)
    assert (await page.connect())[0]
    assert (await page.receive_json_from(timeout=5))["type"] == "snapshot"
    return page


async def eventually(check, seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.01)


async def test_three_pages_on_a_scan_are_one_member_of_its_group_and_each_gets_everything():
    scan = await make_scan(["http://a.example/"])
    cookie = await session_cookie("visitor-1")
    layer = get_channel_layer(PROGRESS_LAYER)
    channels_before = set(layer.channels)
    pages = [await open_page(scan.id, cookie) for _ in range(3)]
    groups = layer.groups
    assert len(groups[group_name(scan.id)]) == 1
    # Nor does each page read a channel of its own: only the relay's is new.
    assert len(set(layer.channels) - channels_before) <= 1

    for seq in (1, 2, 3):
        await announce(scan.id, progress(seq))
    for page in pages:
        received = [await page.receive_json_from(timeout=5) for _ in range(3)]
        assert [m["seq"] for m in received] == [1, 2, 3]

    for page in pages:
        await page.disconnect()
    await eventually(lambda: not groups.get(group_name(scan.id)))


async def test_a_page_opened_as_the_last_one_closes_still_gets_progress():
    scan = await make_scan(["http://a.example/"])
    cookie = await session_cookie("visitor-1")
    first = await open_page(scan.id, cookie)
    # The first's leaving and the second's joining run at once: the join must land last.
    second = communicator(scan.id, cookie)
    await asyncio.gather(first.disconnect(), second.connect())
    await second.receive_json_from(timeout=5)
    await announce(scan.id, progress(1))
    assert (await second.receive_json_from(timeout=5))["seq"] == 1
    await second.disconnect()


class Page:
    def __init__(self) -> None:
        self.texts: list[str] = []

    async def pass_on(self, text: str) -> None:
        self.texts.append(text)


async def test_on_redis_a_process_joins_a_scan_once_and_leaves_after_its_last_page(redis_url):
    prefix = f"test-relay-{uuid.uuid4().hex[:8]}"
    web = RedisPubSubChannelLayer(hosts=[redis_url], prefix=prefix)
    worker = RedisPubSubChannelLayer(hosts=[redis_url], prefix=prefix)
    group_channel = f"{prefix}__group__{group_name('scan-1')}"
    client = redis.from_url(redis_url)

    async def subscribers() -> int:
        return dict(await client.pubsub_numsub(group_channel))[group_channel.encode()]

    relay = Relay(web)
    pages = [Page() for _ in range(3)]
    try:
        for page in pages:
            await relay.watch("scan-1", page)
        assert await subscribers() == 1

        event = {"type": "scan.progress", "scan": "scan-1", "text": json.dumps(progress(7))}
        await worker.group_send(group_name("scan-1"), event)
        await eventually(lambda: all(page.texts for page in pages))
        assert [page.texts for page in pages] == [[event["text"]]] * 3

        for page in pages[:2]:
            relay.unwatch("scan-1", page)
        await asyncio.sleep(0.2)
        assert await subscribers() == 1  # one page still watches
        relay.unwatch("scan-1", pages[2])
        async with asyncio.timeout(5):
            while await subscribers():
                await asyncio.sleep(0.01)
    finally:
        await client.aclose()
        await web.flush()
        await worker.flush()


class PrivateRedis:
    """A redis-server of the test's own, which it may stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed"
        pytest.fail(f"{message} (CI=true: tests may not skip)") if IN_CI else pytest.skip(message)
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


async def test_progress_comes_back_after_redis_restarts(private_redis):
    web = RedisPubSubChannelLayer(hosts=[private_redis.url])
    worker = RedisPubSubChannelLayer(hosts=[private_redis.url])
    relay, page = Relay(web), Page()
    try:
        await relay.watch("scan-1", page)
        private_redis.stop()
        private_redis.start()

        async def publish_until_heard() -> None:
            for seq in range(1, 200):
                event = {"type": "scan.progress", "scan": "scan-1", "text": str(seq)}
                with contextlib.suppress(Exception):  # the first may meet the old connection
                    await worker.group_send(group_name("scan-1"), event)
                if page.texts:
                    return
                await asyncio.sleep(0.05)

        async with asyncio.timeout(10):
            await publish_until_heard()
        assert page.texts
    finally:
        await web.flush()
        await worker.flush()


class LateJoiningLayer(InMemoryChannelLayer):
    """A layer whose group_add returns before the membership holds, as a Redis
    subscription does: it is sent, and Redis takes it when it gets to it."""

    async def group_add(self, group: str, channel: str) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(
            0.2, lambda: loop.create_task(super(LateJoiningLayer, self).group_add(group, channel))
        )


async def test_a_watch_returns_only_once_the_group_reaches_this_process():
    layer = LateJoiningLayer()
    relay = Relay(layer)
    page = Page()
    await relay.watch("scan-1", page)
    # Sent the moment the watch returned, as a write just after the snapshot was read.
    event = {"type": "scan.progress", "scan": "scan-1", "text": json.dumps(progress(1))}
    await layer.group_send(group_name("scan-1"), event)
    await eventually(lambda: page.texts)
    assert page.texts == [event["text"]]
    relay.unwatch("scan-1", page)


async def test_a_page_whose_connect_fails_stops_watching(monkeypatch):
    scan = await make_scan(["http://a.example/"])

    def broken(scan_id, read_after):  # as the database failing under the snapshot's read
        raise RuntimeError("the snapshot could not be read")

    monkeypatch.setattr("scans.consumers.shared_snapshot", database_sync_to_async(broken))
    page = communicator(scan.id, await session_cookie("visitor-1"))
    with pytest.raises(RuntimeError):
        await page.connect()
    assert str(scan.id) not in relay_of_this_loop().watchers
    await eventually(lambda: not get_channel_layer(PROGRESS_LAYER).groups.get(group_name(scan.id)))


async def test_a_lost_membership_comes_back_with_the_next_page():
    scan = await make_scan(["http://a.example/"])
    cookie = await session_cookie("visitor-1")
    first = await open_page(scan.id, cookie)
    # As the in-memory layer does once a message to the relay's channel expired.
    await get_channel_layer(PROGRESS_LAYER).group_discard(
        group_name(scan.id), relay_of_this_loop().channel
    )
    second = await open_page(scan.id, cookie)
    await announce(scan.id, progress(1))
    for page in (first, second):
        assert (await page.receive_json_from(timeout=5))["seq"] == 1
        await page.disconnect()


async def test_a_lost_membership_comes_back_by_itself(monkeypatch):
    monkeypatch.setattr("scans.relay.REJOIN_S", 0.1)
    scan = await make_scan(["http://a.example/"])
    page = await open_page(scan.id, await session_cookie("visitor-1"))
    layer = get_channel_layer(PROGRESS_LAYER)
    await layer.group_discard(group_name(scan.id), relay_of_this_loop().channel)
    await eventually(lambda: layer.groups.get(group_name(scan.id)))
    await announce(scan.id, progress(1))
    assert (await page.receive_json_from(timeout=5))["seq"] == 1
    await page.disconnect()
