"""The in-memory channel layer of a web process that runs scans itself."""

from __future__ import annotations

import asyncio

import pytest

from scans.layers import CLEAN_EVERY_S, InMemoryChannelLayer


async def test_a_message_nobody_reads_still_expires():
    layer = InMemoryChannelLayer(expiry=0.2)
    await layer.send("unread", {"type": "scan.progress", "text": "old"})
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await layer.receive("other")  # sweeps now, before "unread" expires
    await asyncio.sleep(CLEAN_EVERY_S + 0.1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await layer.receive("unread")


async def test_messages_within_their_time_arrive_in_order():
    layer = InMemoryChannelLayer(expiry=5)
    await layer.group_add("scan.x", "page")
    for n in range(3):
        await layer.group_send("scan.x", {"type": "scan.progress", "text": str(n)})
    received = [(await layer.receive("page"))["text"] for _ in range(3)]
    assert received == ["0", "1", "2"]
