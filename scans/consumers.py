"""The live page's socket, and the worker's end of the "scan-jobs" channel."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from scans.models import Scan
from scans.relay import relay_of_this_loop
from scans.runner import get_runner
from scans.snapshots import snapshot

BAD_MESSAGE = 4400
SNAPSHOT_EVERY_S = 1.0
# Daphne sends no message over 1 MiB (its --websocket-max-message-size), so a snapshot
# goes in parts: a part ends at SNAPSHOT_PART_ROWS rows (about 350 bytes each), or
# sooner where long URLs would take it past SNAPSHOT_PART_BYTES.
SNAPSHOT_PART_ROWS = 1000
SNAPSHOT_PART_BYTES = 768 * 1024
# How long sockets share one encoded snapshot of a scan in one state.
SNAPSHOT_SHARED_S = 2.0


class ScanConsumer(AsyncJsonWebsocketConsumer):
    """Sends a snapshot on connect (and on request), then relays progress."""

    # No channel of its own (Channels gives none for a layer that is not configured): its
    # progress comes through scans.relay, and an idle channel would be one more receiver
    # on the layer, for nothing.
    channel_layer_alias = "none: progress comes through scans.relay"
    last_snapshot = float("-inf")
    owed_snapshot: asyncio.Task | None = None

    async def connect(self) -> None:
        self.scan_id = self.scope["url_route"]["kwargs"]["scan_id"]
        if not await self.may_see_scan():
            await self.close()
            return
        # Progress that comes before the snapshot is sent waits here, then follows it.
        self.held: list[str] | None = []
        # Watch before the snapshot is read, so nothing falls between the two; read it
        # before accepting, so the first message is as new as the moment the page opened.
        await relay_of_this_loop().watch(self.scan_id, self)
        try:
            self.last_snapshot = joined = time.monotonic()
            parts = await shared_snapshot(self.scan_id, read_after=joined)
            if parts is None:
                await self.close()  # the scan was deleted meanwhile
                return
            await self.accept()
            await self.send_parts(parts)
            while self.held:
                await self.send(text_data=self.held.pop(0))
            self.held = None
        except BaseException:
            # An application that dies here gets no disconnect: stop watching now.
            relay_of_this_loop().unwatch(self.scan_id, self)
            raise

    async def disconnect(self, code: int) -> None:
        if self.owed_snapshot is not None:
            self.owed_snapshot.cancel()
        relay_of_this_loop().unwatch(self.scan_id, self)  # nothing, if it never watched

    async def pass_on(self, text: str) -> None:
        """A progress message of the scan, as it came (see scans.relay)."""
        if self.held is not None:
            self.held.append(text)
        else:
            await self.send(text_data=text)

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

    async def send_snapshot(self) -> None:
        # Read after the page asked: it holds what the page found missing.
        self.last_snapshot = asked = time.monotonic()
        parts = await shared_snapshot(self.scan_id, read_after=asked)
        if parts is None:
            await self.close()  # the scan was deleted
            return
        await self.send_parts(parts)

    async def send_parts(self, parts: list[str]) -> None:
        for part in parts:
            await self.send(text_data=part)

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


@dataclass(frozen=True)
class SharedSnapshot:
    """A snapshot's encoded parts, for every socket that asks while it is current."""

    parts: list[str]
    read_at: float  # time.monotonic() when its reading began

    def serves(self, read_after: float) -> bool:
        """Whether it began after ``read_after``: after the socket joined the scan's group
        (every write it missed reaches the socket as progress), or after the page asked."""
        fresh = time.monotonic() - self.read_at < SNAPSHOT_SHARED_S
        return fresh and self.read_at > read_after


# The latest snapshot of each scan; the lock makes sockets asking at once wait for one reading.
_snapshots: dict[str, SharedSnapshot] = {}
_snapshots_lock = threading.Lock()


@database_sync_to_async
def shared_snapshot(scan_id: str, read_after: float) -> list[str] | None:
    """The scan's snapshot as the texts of its parts, read after ``read_after``
    (a ``time.monotonic()``); None once the scan is gone.

    Sockets share readings: one begun after a socket joined the scan's group serves it,
    so 200 pages opened at once on a running scan wait for a reading or two between
    them, not one each (each read every row and 200 pages were 200 readings, one a
    write, as the scan moved on while they queued).
    """
    with _snapshots_lock:
        shared = _snapshots.get(scan_id)
        if shared is None or not shared.serves(read_after):
            read_at = time.monotonic()
            try:
                # Not the pending rows: the page has them from its HTML, and at a big
                # scan's start they were most of the reading and the sending (3.1 MB for
                # 10,000 URLs).
                data = snapshot(scan_id, finished_only=True)
            except Scan.DoesNotExist:
                return None
            shared = SharedSnapshot(snapshot_parts(data), read_at)
            _forget_old_snapshots()
            _snapshots[scan_id] = shared
    return shared.parts


def _forget_old_snapshots() -> None:
    now = time.monotonic()
    for scan_id, shared in list(_snapshots.items()):
        if now - shared.read_at >= SNAPSHOT_SHARED_S:
            del _snapshots[scan_id]


def snapshot_parts(data: dict) -> list[str]:
    """The texts of a snapshot's parts; every part carries the scan and the same seq."""
    rows = data["results"]
    chunks = [rows[i : i + SNAPSHOT_PART_ROWS] for i in range(0, len(rows), SNAPSHOT_PART_ROWS)]
    encoded = [text for chunk in chunks or [[]] for text in _encoded_rows(chunk)]
    # The head without its closing brace, then each part's own keys and its rows.
    head = json.dumps({"type": "snapshot", "seq": data["seq"], "scan": data["scan"]})[:-1]
    return [
        f'{head}, "part": {part}, "parts": {len(encoded)}, "results": {text}}}'
        for part, text in enumerate(encoded, start=1)
    ]


def _encoded_rows(rows: list[dict]) -> list[str]:
    """The rows as JSON arrays, halved until each is under SNAPSHOT_PART_BYTES
    (json.dumps escapes all but ASCII, so its length is its size in bytes)."""
    text = json.dumps(rows)
    if len(text) <= SNAPSHOT_PART_BYTES or len(rows) <= 1:
        return [text]
    half = len(rows) // 2
    return _encoded_rows(rows[:half]) + _encoded_rows(rows[half:])
