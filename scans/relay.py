"""Progress for the sockets of this process: one member of a scan's group per process
and event loop, not one per socket.

A socket in a group costs its web process a receive from the channel layer for every
message (with channels-redis, two tasks and a wait): with 200 sockets on one running scan,
that was most of daphne's CPU. Here a process's sockets on a scan share one channel in the
scan's group: it joins when the first of them arrives (again with each one after, and every
REJOIN_S: the in-memory layer drops a channel from its groups once a message in it expires),
leaves after the last, and hands each message it receives to each of them in turn.

The progress layer (``PROGRESS_LAYER``) is Redis pub/sub when there is Redis: a group is a
Redis channel the process subscribes to, and a message one PUBLISH. Joining again costs
nothing there (channels-redis subscribes once), and a subscription lost to a restart of Redis
is made again by redis-py as it reconnects. A subscription is sent, not answered, so a
socket's watch also sends an echo to the group and waits until it comes back: from then on
every message published reaches this process, so nothing written after the socket's snapshot
was read can pass it by. An echo that never comes back (ECHO_WAIT_S) is logged, and the
socket watches all the same: the page asks for a snapshot when a running scan goes quiet.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
import weakref
from contextlib import suppress
from typing import Protocol

from channels.layers import get_channel_layer

from scans.announcer import PROGRESS_LAYER, group_name

log = logging.getLogger(__name__)

RETRY_S = 1.0
REJOIN_S = 30.0
# An echo published before the subscription landed is lost: sent again after 50 ms, then
# after twice as long each time (a busy process may simply not have read it yet).
ECHO_FIRST_WAIT_S = 0.05
ECHO_WAIT_S = 2.0  # then watch anyway: progress is a hint, and the page can ask for a snapshot
# Calls to the channel layer for groups at once. channels-redis's pool of Redis
# connections (redis-py's, 100 a process) raises rather than waits when all are in use.
GROUP_CALLS_AT_ONCE = 20


class Watcher(Protocol):
    async def pass_on(self, text: str) -> None: ...


class Relay:
    """The sockets of one event loop that watch each scan, and the channel their progress
    comes in on."""

    def __init__(self, layer=None) -> None:
        self.layer = layer or get_channel_layer(PROGRESS_LAYER)
        self.watchers: dict[str, set[Watcher]] = {}
        self.channel: str | None = None
        # A scan's group_add and group_discard for this channel, in the order they were
        # asked for: a discard still under way must not land after the next add.
        self._joined: dict[str, asyncio.Task] = {}
        self._leaving: dict[str, asyncio.Task] = {}
        self._chores: list[asyncio.Task] = []
        self._opening = asyncio.Lock()
        self._group_calls = asyncio.Semaphore(GROUP_CALLS_AT_ONCE)
        self._echoes: dict[str, asyncio.Future[None]] = {}
        self._opening_soon: asyncio.Task | None = None

    async def watch(self, scan_id: str | uuid.UUID, watcher: Watcher) -> None:
        """Once this returns, every progress message of the scan that the layer delivers
        goes to ``watcher.pass_on``. Raises, watching nothing, if the layer cannot be joined."""
        scan_id = str(scan_id)  # as the messages name it
        await self._open()
        self.watchers.setdefault(scan_id, set()).add(watcher)
        # Joined again for each socket, as each socket once joined for itself: a
        # membership the in-memory layer dropped since the first would otherwise stay lost.
        joined = self._joined[scan_id] = _spawn(self._join(scan_id, heard=True))
        try:
            await asyncio.shield(joined)
        except BaseException:  # the join failed, or the socket went while it waited
            self.unwatch(scan_id, watcher)
            raise

    def unwatch(self, scan_id: str | uuid.UUID, watcher: Watcher) -> None:
        scan_id = str(scan_id)
        watchers = self.watchers.get(scan_id)
        if watchers is None or watcher not in watchers:
            return
        watchers.discard(watcher)
        if watchers:
            return
        del self.watchers[scan_id]
        joined = self._joined.pop(scan_id, None)
        self._leaving[scan_id] = _spawn(self._leave(scan_id, joined))

    def open_soon(self) -> None:
        """Opens the relay's channel in the background, ahead of its first socket: on Redis,
        channels-redis's receiver looks for a first subscription only every 0.1 s, so the
        first socket's echo took 104-105 ms; on a relay already open, 4-6 ms."""
        if self.channel is None and (self._opening_soon is None or self._opening_soon.done()):
            self._opening_soon = _spawn(self._open_or_log())

    async def _open_or_log(self) -> None:
        try:
            await self._open()
        except Exception as e:  # noqa: BLE001 - the first socket tries again, and says why
            log.warning("could not open the progress relay yet: %r", e)

    async def _open(self) -> None:
        async with self._opening:
            if self.channel is None:
                self.channel = await self.layer.new_channel()
            if not self._chores or any(chore.done() for chore in self._chores):
                for chore in self._chores:
                    chore.cancel()
                self._chores = [_spawn(self._receive_forever()), _spawn(self._rejoin_forever())]

    async def _join(self, scan_id: str, heard: bool = False) -> None:
        leaving = self._leaving.get(scan_id)
        if leaving is not None:
            await asyncio.wait([leaving])
        async with self._group_calls:
            await self.layer.group_add(group_name(scan_id), self.channel)
        if not heard:
            return
        # After a leave, twice: its unsubscribe and this subscribe went out on one connection
        # and the echo on another, so the first echo may have come back through the old
        # subscription. One sent after it came back comes through the new one.
        for _ in range(1 if leaving is None else 2):
            await self._hear_echo(scan_id)

    async def _hear_echo(self, scan_id: str) -> None:
        """Returns once a message sent to the scan's group after joining it came back."""
        token = uuid.uuid4().hex
        echo = {"type": "relay.echo", "echo": token}
        came_back = self._echoes[token] = asyncio.get_running_loop().create_future()
        wait_s = ECHO_FIRST_WAIT_S
        try:
            async with asyncio.timeout(ECHO_WAIT_S):
                while not came_back.done():
                    async with self._group_calls:
                        await self.layer.group_send(group_name(scan_id), echo)
                    await asyncio.wait([came_back], timeout=wait_s)
                    wait_s *= 2
        except TimeoutError:
            log.warning("no echo from scan %s's group in %g s", scan_id, ECHO_WAIT_S)
        finally:
            del self._echoes[token]

    async def _leave(self, scan_id: str, joined: asyncio.Task | None) -> None:
        try:
            if joined is not None:
                await asyncio.wait([joined])  # failed or not: an earlier join may have held
            async with self._group_calls:
                with suppress(Exception):  # a membership left behind expires
                    await self.layer.group_discard(group_name(scan_id), self.channel)
        finally:
            if self._leaving.get(scan_id) is asyncio.current_task():
                del self._leaving[scan_id]

    async def _rejoin_forever(self) -> None:
        while True:
            await asyncio.sleep(REJOIN_S)
            joins = {scan_id: _spawn(self._join(scan_id)) for scan_id in self.watchers}
            self._joined.update(joins)
            for scan_id, outcome in zip(
                joins, await asyncio.gather(*joins.values(), return_exceptions=True), strict=True
            ):
                if isinstance(outcome, Exception):
                    log.warning("could not join scan %s's group again: %r", scan_id, outcome)

    async def _receive_forever(self) -> None:
        while True:
            try:
                event = await self.layer.receive(self.channel)
            except Exception:
                # Messages are hints: pages see the gap in seq and read the database.
                log.exception("could not receive progress on %s", self.channel)
                await asyncio.sleep(RETRY_S)
                continue
            if "echo" in event:  # this process's own, or another's, which it ignores
                came_back = self._echoes.get(event["echo"])
                if came_back is not None and not came_back.done():
                    came_back.set_result(None)
                continue
            for watcher in list(self.watchers.get(event.get("scan"), ())):
                try:
                    await watcher.pass_on(event["text"])
                except Exception as e:  # noqa: BLE001 - one socket's failure is not the others'
                    # Most often its socket closed after the message came; its disconnect
                    # follows, and with it the unwatch.
                    log.info("progress of scan %s not relayed: %r", event.get("scan"), e)


def _spawn(coro) -> asyncio.Task:
    """A task in a fresh context, not the first socket's: it outlives that socket."""
    return asyncio.create_task(coro, context=contextvars.Context())


_relays: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Relay] = weakref.WeakKeyDictionary()


def relay_of_this_loop() -> Relay:
    """The relay of the running event loop (daphne has one; each test has its own)."""
    loop = asyncio.get_running_loop()
    found = _relays.get(loop)
    if found is None:
        found = _relays[loop] = Relay()
    return found
