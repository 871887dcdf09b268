"""Progress messages to the sockets watching a scan, through the progress channel layer.

Messages go out one after another, in the order they were written, without holding
up the next write. A worker's event loop runs a hundred fetches at once; under that
load each round trip to Redis waited its turn there (up to 30 ms), so a worker on Redis
sends from a thread and event loop of its own. There a message is one PUBLISH (Redis
pub/sub: ``PROGRESS_LAYER``); channels-redis's list-based layer took four round trips a
group message. The in-memory layer belongs to the loop of the web process that holds it,
and sends from there (the web process's runner has a loop of its own, and hands its
messages over).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from concurrent.futures import Future

from channels.layers import InMemoryChannelLayer, get_channel_layer

from scans.loops import start_loop_thread

log = logging.getLogger(__name__)


# The layer progress goes through (settings.CHANNEL_LAYERS): Redis pub/sub, or in memory.
PROGRESS_LAYER = "progress"


def group_name(scan_id: uuid.UUID | str) -> str:
    return f"scan.{scan_id}"


async def announce(scan_id: uuid.UUID | str, message: dict) -> None:
    """Sends a progress message to every socket watching the scan, encoded once here:
    the sockets relay the text as it is, and the layer copies a string, not the results."""
    text = json.dumps({"type": "progress", **message})
    event = {"type": "scan.progress", "scan": str(scan_id), "text": text}
    await get_channel_layer(PROGRESS_LAYER).group_send(group_name(scan_id), event)


async def announce_or_log(
    scan_id: uuid.UUID | str, message: dict, timeout_s: float | None = None
) -> None:
    """Announces written results; a layer that fails (or takes longer than ``timeout_s``)
    loses a hint, never a result: the pages see the gap in ``seq`` and read the database."""
    try:
        async with asyncio.timeout(timeout_s):
            await announce(scan_id, message)
    except Exception:
        log.exception("could not announce progress of scan %s", scan_id)


# A send that takes longer is given up (the pages see the gap in seq and read the database),
# and past this many messages waiting, new ones are dropped the same way: a Redis that
# accepts connections and never answers must not hold a worker's memory or its shutdown.
SEND_TIMEOUT_S = 2.0
MAX_WAITING = 100


class Announcer:
    """Sends progress messages one after another on ``loop``, or else on a thread and
    event loop of its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._last: asyncio.Task | None = None  # used on self.loop only
        self._waiting = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if loop is None:
            loop, self._thread = start_loop_thread("scans-announce")
        self.loop = loop

    @classmethod
    def for_this_process(cls) -> Announcer:
        """On the running loop for the in-memory layer; on a thread of its own for others."""
        if isinstance(get_channel_layer(PROGRESS_LAYER), InMemoryChannelLayer):
            return cls(asyncio.get_running_loop())
        return cls()

    def close(self) -> None:
        """Stops its own thread, if it has one, and closes its connections. What is still
        queued is dropped: a scan's run waits for its last message before its worker
        closes this."""
        if self._thread is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop)
            self._thread.join(timeout=SEND_TIMEOUT_S + 1)

    async def _stop(self) -> None:
        queued = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in queued:
            task.cancel()
        if queued:
            await asyncio.wait(queued, timeout=1)
        self.loop.stop()

    def send(self, scan_id: uuid.UUID | str, message: dict) -> Future | None:
        """Queues the message after those already queued; the future ends once it is sent.
        None: too many are waiting already, and this one is dropped."""
        with self._lock:
            if self._waiting >= MAX_WAITING:
                log.warning("progress of scan %s dropped: %d waiting", scan_id, MAX_WAITING)
                return None
            self._waiting += 1
        return asyncio.run_coroutine_threadsafe(self._send_in_turn(scan_id, message), self.loop)

    async def _send_in_turn(self, scan_id: uuid.UUID | str, message: dict) -> None:
        # Tasks start in the order they were queued, so each waits for the one before.
        previous, self._last = self._last, asyncio.current_task()
        try:
            if previous is not None:
                await asyncio.wait([previous])
            await announce_or_log(scan_id, message, SEND_TIMEOUT_S)
        finally:
            with self._lock:
                self._waiting -= 1
