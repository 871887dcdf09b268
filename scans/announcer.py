"""Progress messages to the sockets watching a scan, through the channel layer.

A worker's event loop runs a hundred fetches at once; under that load each of the
layer's round trips to Redis waited its turn there (up to 30 ms a hop), and a
group message takes four. A worker on Redis therefore sends from a thread and
event loop of its own, in the order the messages were written. The in-memory
layer belongs to the loop of the web process that holds it, and sends from there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from concurrent.futures import Future

from channels.layers import InMemoryChannelLayer, get_channel_layer

log = logging.getLogger(__name__)


def group_name(scan_id: uuid.UUID | str) -> str:
    return f"scan.{scan_id}"


async def announce(scan_id: uuid.UUID | str, message: dict) -> None:
    """Sends a progress message to every socket watching the scan, encoded once here:
    the sockets relay the text as it is, and the layer copies a string, not the results."""
    event = {"type": "scan.progress", "text": json.dumps({"type": "progress", **message})}
    await get_channel_layer().group_send(group_name(scan_id), event)


async def announce_or_log(scan_id: uuid.UUID | str, message: dict) -> None:
    """Announces written results; a layer that fails loses a hint, never a result:
    the pages see the gap in ``seq`` and read the database."""
    try:
        await announce(scan_id, message)
    except Exception:
        log.exception("could not announce progress of scan %s", scan_id)


class Announcer:
    """Sends progress messages one after another from its own thread and event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._last: asyncio.Task | None = None  # used on self.loop only
        threading.Thread(target=self.loop.run_forever, name="scans-announce", daemon=True).start()

    @classmethod
    def for_this_process(cls) -> Announcer | None:
        """An announcer when the layer can be used from another loop; None for in-memory."""
        return None if isinstance(get_channel_layer(), InMemoryChannelLayer) else cls()

    def send(self, scan_id: uuid.UUID | str, message: dict) -> Future:
        """Queues the message after those already queued; the future ends once it is sent."""
        return asyncio.run_coroutine_threadsafe(self._send_in_turn(scan_id, message), self.loop)

    async def _send_in_turn(self, scan_id: uuid.UUID | str, message: dict) -> None:
        # Tasks start in the order they were queued, so each waits for the one before.
        previous, self._last = self._last, asyncio.current_task()
        if previous is not None:
            await asyncio.wait([previous])
        await announce_or_log(scan_id, message)
