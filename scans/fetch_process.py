"""Fetches in a child process: the same ``fetch`` as ``Fetcher``, on a core of its own.

The web process's embedded runner shares one GIL with the pages, the sockets and
the database writes; a hundred fetches at once kept that one core busy alone. Here
the parent sends each URL over a socket pair to a child that runs a ``Fetcher``,
and gets its ``Fetched`` back (and, for a fetch that waits for its host, word of the
wait and of its start): both ways, what a loop's turn gathered goes as one
frame (a 4-byte length, then a pickled list), so a URL costs the parent a few
microseconds, not an aiohttp request.

The child is Django-free (``scans.fetch`` only), ends when the parent's end of the
socket closes, and is started again by the next fetch if it died. A fetch that was
under way when it died raises ``FetchProcessGone``, as a worker's crash would end
the scan's run: its rows go back and are fetched again.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable

from scans.fetch import Fetched, Fetcher, Limits, UnderWay

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")


class FetchProcessGone(Exception):
    """The fetch child ended while a fetch was under way."""


class _Frames(asyncio.Protocol):
    """Both ends: length-prefixed pickled lists in, ``deliver`` called with each list;
    ``send`` gathers items and writes them as one frame at the end of the loop's turn."""

    def __init__(self, deliver: Callable[[list], None], lost: Callable[[], None]):
        self.deliver = deliver
        self.lost = lost
        self.transport: asyncio.Transport | None = None
        self.inbox = bytearray()
        self.outbox: list = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        inbox = self.inbox
        inbox += data
        start = 0
        while len(inbox) - start >= 4:
            (length,) = _LENGTH.unpack_from(inbox, start)
            end = start + 4 + length
            if len(inbox) < end:
                break
            self.deliver(pickle.loads(inbox[start + 4 : end]))
            start = end
        del inbox[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.lost()

    def send(self, item: object) -> None:
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self.outbox.append(item)

    def _flush(self) -> None:
        items, self.outbox = self.outbox, []
        if self.transport is not None and items:
            body = pickle.dumps(items, pickle.HIGHEST_PROTOCOL)
            self.transport.write(_LENGTH.pack(len(body)) + body)


class FetchProcess:
    """``async with FetchProcess(limits) as f: await f.fetch(url, scan_start, timeout_s)``."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._child: subprocess.Popen | None = None
        self._frames: _Frames | None = None
        # Each fetch under way: its answer, and whom to tell if it waits for its host.
        self._pending: dict[int, tuple[asyncio.Future[Fetched], UnderWay | None]] = {}
        self._ids = itertools.count()
        self._starting: asyncio.Lock | None = None
        self._reaping: set[asyncio.Future] = set()

    async def __aenter__(self) -> FetchProcess:
        """Starts the child now, so that the first fetch does not wait for it; if it cannot
        start, the first fetch tries again."""
        self._starting = asyncio.Lock()
        try:
            await self._ensure_child()
        except OSError:
            log.exception("could not start the fetch process: the next fetch tries again")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        child, self._child = self._child, None
        if self._frames is not None and self._frames.transport is not None:
            self._frames.transport.close()  # the child sees the end, and exits
        if child is not None:
            await asyncio.to_thread(_wait_or_kill, child)
        if self._reaping:
            await asyncio.gather(*self._reaping)

    @property
    def pid(self) -> int | None:
        """The child's process id; None while none runs (before it starts, or after it died)."""
        return None if self._child is None else self._child.pid

    async def fetch(
        self,
        url: str,
        scan_start: float,
        timeout_s: float | None = None,
        waits: UnderWay | None = None,
    ) -> Fetched:
        """``Fetcher.fetch``, in the child (started again first if it is not running)."""
        frames = await self._ensure_child()
        fetch_id = next(self._ids)
        done = asyncio.get_running_loop().create_future()
        self._pending[fetch_id] = (done, waits)
        frames.send((fetch_id, url, scan_start, timeout_s, waits is not None))
        try:
            return await done
        except asyncio.CancelledError:
            if self._pending.pop(fetch_id, None) is not None and frames.transport is not None:
                frames.send((fetch_id, None, None, None, False))  # the child stops fetching it
            raise

    async def _ensure_child(self) -> _Frames:
        if self._frames is not None and self._frames.transport is not None:
            return self._frames
        async with self._starting:
            if self._frames is None or self._frames.transport is None:
                await self._start_child()
        return self._frames

    async def _start_child(self) -> None:
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        with theirs:
            command = [sys.executable, "-m", "scans.fetch_process", str(theirs.fileno())]
            self._child = subprocess.Popen(command, pass_fds=[theirs.fileno()], env=env)
        loop = asyncio.get_running_loop()
        _, self._frames = await loop.create_connection(
            lambda: _Frames(self._finished, self._child_gone), sock=ours
        )
        self._frames.send(self.limits)

    def _finished(self, items: list) -> None:
        for fetch_id, fetched in items:
            if not isinstance(fetched, Fetched):  # the fetch waits for its host, or no longer
                _, waits = self._pending.get(fetch_id, (None, None))
                if waits is not None:
                    waits(fetched)
                continue
            done, _ = self._pending.pop(fetch_id, (None, None))
            if done is not None and not done.done():
                done.set_result(fetched)

    def _child_gone(self) -> None:
        child, self._child = self._child, None
        if child is not None:  # reaped at once, not left a zombie until the next start
            reaping = asyncio.ensure_future(asyncio.to_thread(_wait_or_kill, child))
            self._reaping.add(reaping)
            reaping.add_done_callback(self._reaping.discard)
        pending, self._pending = self._pending, {}
        for done, _ in pending.values():
            if not done.done():
                done.set_exception(FetchProcessGone("the fetch process ended during the fetch"))


def _wait_or_kill(child: subprocess.Popen) -> None:
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


class _Child:
    """The child's side: fetches what arrives, sends back each ``Fetched`` as it ends."""

    def __init__(self) -> None:
        self.fetcher: Fetcher | None = None
        self.opened: asyncio.Future | None = None  # the fetcher's session, once its limits came
        self.tasks: dict[int, asyncio.Task] = {}
        self.frames = _Frames(self._received, self._parent_gone)
        self.ended = asyncio.get_running_loop().create_future()

    def _received(self, items: list) -> None:
        for item in items:
            if isinstance(item, Limits):
                self.fetcher = Fetcher(item)
                self.opened = asyncio.ensure_future(self.fetcher.__aenter__())
                continue
            fetch_id, url, scan_start, timeout_s, tell_waits = item
            if url is None:
                task = self.tasks.pop(fetch_id, None)
                if task is not None:
                    task.cancel()
                continue
            waits = functools.partial(self._tell_waits, fetch_id) if tell_waits else None
            task = asyncio.ensure_future(self._fetch(url, scan_start, timeout_s, waits))
            self.tasks[fetch_id] = task
            task.add_done_callback(lambda t, i=fetch_id: self._send(i, t))

    async def _fetch(
        self, url: str, scan_start: float, timeout_s: float | None, waits: UnderWay | None
    ) -> Fetched:
        await asyncio.shield(self.opened)  # one fetch cancelled must not cancel the session
        return await self.fetcher.fetch(url, scan_start, timeout_s, waits)

    def _tell_waits(self, fetch_id: int, start_ms: float | None) -> None:
        self.frames.send((fetch_id, start_ms))

    def _send(self, fetch_id: int, task: asyncio.Task) -> None:
        if self.tasks.pop(fetch_id, None) is None or task.cancelled():
            return
        error = task.exception()
        if error is not None:  # a bug of ours: the parent's fetch fails as a crash would
            traceback.print_exception(error)  # to the parent's error output, its log
            if self.frames.transport is not None:
                self.frames.transport.close()
            return
        self.frames.send((fetch_id, task.result()))

    def _parent_gone(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


async def _serve(fd: int) -> None:
    child = _Child()
    sock = socket.socket(fileno=fd)
    await asyncio.get_running_loop().create_connection(lambda: child.frames, sock=sock)
    await child.ended
    for task in child.tasks.values():
        task.cancel()
    if child.fetcher is not None:
        await child.fetcher.__aexit__(None, None, None)


if __name__ == "__main__":
    # Ctrl+C, and a service manager's SIGTERM, reach the whole process group: the parent
    # decides when this ends, by closing its end of the socket (as it does, too, when it
    # dies), after its fetches under way have ended or been handed back.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asyncio.run(_serve(int(sys.argv[1])))
