"""The live page's socket, and the worker's end of the "scan-jobs" channel."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from scans.models import Scan
from scans.runner import get_runner, group_name
from scans.snapshots import snapshot

BAD_MESSAGE = 4400
SNAPSHOT_EVERY_S = 1.0
# About 350 bytes a row: a part stays well under daphne's 1 MiB message limit.
SNAPSHOT_PART_ROWS = 1000


class ScanConsumer(AsyncJsonWebsocketConsumer):
    """Sends a snapshot on connect (and on request), then relays progress."""

    group: str | None = None
    last_snapshot = float("-inf")
    owed_snapshot: asyncio.Task | None = None

    async def connect(self) -> None:
        self.scan_id = self.scope["url_route"]["kwargs"]["scan_id"]
        if not await self.may_see_scan():
            await self.close()
            return
        self.group = group_name(self.scan_id)
        # Join before the snapshot is read, so nothing falls between the two.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_snapshot()

    async def disconnect(self, code: int) -> None:
        if self.owed_snapshot is not None:
            self.owed_snapshot.cancel()
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            content = json.loads(text_data or "")
        except (ValueError, RecursionError):
            content = None
        if isinstance(content, dict) and content.get("type") == "snapshot":
            await self.snapshot_soon()
        else:
            await self.close(code=BAD_MESSAGE)

    async def snapshot_soon(self) -> None:
        """Answers a snapshot request, at most one per SNAPSHOT_EVERY_S: each reads every row."""
        wait_s = self.last_snapshot + SNAPSHOT_EVERY_S - time.monotonic()
        if wait_s <= 0:
            await self.send_snapshot()
        elif self.owed_snapshot is None:
            self.owed_snapshot = asyncio.create_task(self.send_snapshot_after(wait_s))

    async def send_snapshot_after(self, wait_s: float) -> None:
        await asyncio.sleep(wait_s)
        self.owed_snapshot = None
        await self.send_snapshot()

    async def scan_progress(self, event: dict) -> None:
        await self.send(text_data=event["text"])

    async def send_snapshot(self) -> None:
        """A snapshot, in parts of SNAPSHOT_PART_ROWS results so no message passes
        daphne's 1 MiB limit; every part carries the scan and the same seq."""
        self.last_snapshot = time.monotonic()
        data = await self.read_snapshot()
        rows = data["results"]
        parts = max(1, -(-len(rows) // SNAPSHOT_PART_ROWS))
        for part in range(parts):
            chunk = rows[part * SNAPSHOT_PART_ROWS : (part + 1) * SNAPSHOT_PART_ROWS]
            await self.send_json(
                {"type": "snapshot", **data, "results": chunk, "part": part + 1, "parts": parts}
            )

    @database_sync_to_async
    def read_snapshot(self) -> dict:
        return snapshot(self.scan_id)

    @database_sync_to_async
    def may_see_scan(self) -> bool:
        scan = Scan.objects.filter(pk=self.scan_id).first()
        session = self.scope.get("session")
        key = session.get("visitor_key") if session is not None else None
        return scan is not None and scan.owned_by(self.scope.get("user"), key)


class ScanJobConsumer(AsyncConsumer):
    """Receives "scan.start" wake-ups; each scan then runs as its own task."""

    async def scan_start(self, message: dict) -> None:
        get_runner().start(uuid.UUID(message["scan_id"]))
