"""Runs scans in this process: where the fetcher meets the database and the channel layer.

One ``Runner`` per process (the web process without Redis, or each
``runworker scan-jobs`` process with it). Each scan runs as its own task, so
several scans progress at once under one cap on open fetches. A scan's task
claims pending rows in batches, fetches them, and every ``SCANS_FLUSH_SECONDS`` writes
what finished in one transaction and announces it in one group message.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import TypeVar

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from scans import store
from scans.announcer import Announcer
from scans.fetch import Fetched, Fetcher, Limits
from scans.fetch_process import FetchProcess
from scans.loops import start_loop_thread
from scans.models import Scan
from scans.store import Claimed, ScanPlan

log = logging.getLogger(__name__)

SCAN_JOBS = "scan-jobs"
SWEEP_S = 5.0
WATCH_S = 0.5
LAST_ANNOUNCE_WAIT_S = 5.0
RECOUNT_S = 0.25


def spawn(coro) -> asyncio.Task:
    """A task in a fresh context: one started while serving a request must not
    inherit that request's thread-sensitive executor, which dies with it."""
    return asyncio.create_task(coro, context=contextvars.Context())


T = TypeVar("T")
_db_thread = ThreadPoolExecutor(1, thread_name_prefix="scans-db")


async def db(query: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Runs a store query on the runner's own thread and connection.

    Not queued behind page requests on Django's shared thread, and not
    reconnected for every call (which on PostgreSQL costs more than the query).
    """
    call = functools.partial(_keep_connection, query, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_db_thread, call)


def _keep_connection(query: Callable[..., T], *args: object, **kwargs: object) -> T:
    try:
        return query(*args, **kwargs)
    except (OperationalError, InterfaceError):
        connection.close()  # a broken connection: the next query opens a new one
        raise


def close_connection() -> None:
    connection.close()


def limits_from_settings() -> Limits:
    return Limits(
        timeout_s=settings.SCANS_TIMEOUT,
        connect_timeout_s=settings.SCANS_CONNECT_TIMEOUT,
        max_bytes=settings.SCANS_MAX_BYTES,
        max_redirects=settings.SCANS_MAX_REDIRECTS,
        per_host=settings.SCANS_PER_HOST_LIMIT,
        max_open=settings.SCANS_WORKER_MAX_FETCHES,
        allowed_networks=tuple(settings.SCANS_ALLOWED_NETWORKS),
        allowed_ports=settings.SCANS_ALLOWED_PORTS,
    )


class Runner:
    def __init__(self, worker_id: str | None = None):
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.scans: dict[uuid.UUID, asyncio.Task] = {}
        # Scans woken while they ran here: their rows may have come back, so look again.
        self.woken: set[uuid.UUID] = set()
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.gate: asyncio.Semaphore | None = None
        self._fetcher: Fetcher | FetchProcess | None = None
        self._chores: list[asyncio.Task] = []
        self.announcer: Announcer | None = None
        self._thread: threading.Thread | None = None  # set when started beside a web server
        self._starting = threading.Lock()

    def ensure_started(self, announcer: Announcer | None = None) -> None:
        """Starts the sweeper and the watcher on the running loop, once."""
        if self._chores:
            return
        self.loop = asyncio.get_running_loop()
        self.gate = asyncio.Semaphore(settings.SCANS_WORKER_MAX_FETCHES)
        fetcher = FetchProcess if settings.SCANS_FETCH_IN_CHILD else Fetcher
        self._fetcher = fetcher(limits_from_settings())
        self.announcer = announcer or Announcer.for_this_process()
        self._chores = [
            spawn(self._fetcher_open()),
            spawn(self._sweep_forever()),
            spawn(self._watch_forever()),
        ]

    def start_beside(self, web_loop: asyncio.AbstractEventLoop) -> None:
        """Starts the runner on a thread and event loop of its own, once, in a web process.

        A hundred fetches keep a loop busy: on the web server's loop, every hop of a
        progress message (the announce, the socket's consumer, daphne's send) and every
        page request waited for its turn behind them. Apart, they wait only for the GIL,
        which the fetch loop gives up at each of its system calls. The in-memory layer
        belongs to the web server's loop, so progress is announced there.
        """
        if self._thread is not None:
            return
        with self._starting:
            if self._thread is not None:
                return
            loop, thread = start_loop_thread("scans-runner")
            started = asyncio.run_coroutine_threadsafe(self._start_here(Announcer(web_loop)), loop)
            started.result()  # the runner's loop is set: calls can be handed to it
            self._thread = thread

    async def _start_here(self, announcer: Announcer) -> None:
        self.ensure_started(announcer)

    async def _fetcher_open(self) -> None:
        await self._fetcher.__aenter__()

    async def fetcher(self) -> Fetcher | FetchProcess:
        await self._chores[0]
        return self._fetcher

    def start(self, scan_id: uuid.UUID | str) -> None:
        """Runs the scan here; if it runs here already, it looks for free rows again after.
        Called from another thread's loop, it hands the call to the runner's own."""
        if self.stopping:
            return
        if self._thread is not None and threading.current_thread() is not self._thread:
            self.loop.call_soon_threadsafe(self.start, scan_id)
            return
        self.ensure_started()
        scan_id = uuid.UUID(str(scan_id))
        task = self.scans.get(scan_id)
        if task is not None and not task.done():
            self.woken.add(scan_id)
            return
        task = spawn(self._run(scan_id))
        self.scans[scan_id] = task
        task.add_done_callback(lambda t: self._forget(scan_id, t))

    def _forget(self, scan_id: uuid.UUID, task: asyncio.Task) -> None:
        if self.scans.get(scan_id) is task:
            del self.scans[scan_id]

    async def _run(self, scan_id: uuid.UUID) -> None:
        try:
            while True:
                self.woken.discard(scan_id)
                plan = await db(store.begin_scan, scan_id)
                if plan is None:
                    return
                await ScanRun(self, scan_id, plan).run()
                if scan_id not in self.woken:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scan %s failed in worker %s", scan_id, self.worker_id)
            # Hand its rows back; if even that fails, their leases run out (nobody renews them).
            with suppress(Exception):
                await db(store.release_claims, self.worker_id, scan_id, as_attempt=True)

    async def _sweep_forever(self) -> None:
        if settings.SCANS_RUN_IN_WEB:
            # The only runner there is: claims left from before a restart are dead.
            await db(store.release_claims, None, as_attempt=True)
        while True:
            try:
                for scan_id in await db(store.scans_with_work):
                    self.start(scan_id)
            except Exception:
                log.exception("worker %s could not sweep for work", self.worker_id)
            await asyncio.sleep(SWEEP_S)

    async def _watch_forever(self) -> None:
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                await self._stop_cancelled()
                if time.monotonic() - renewed > settings.SCANS_LEASE_SECONDS / 3:
                    await db(store.renew_leases, self.worker_id, list(self.scans))
                    renewed = time.monotonic()
            except Exception:
                log.exception("worker %s could not renew its leases", self.worker_id)

    async def _stop_cancelled(self) -> None:
        if not self.scans:
            return
        for scan_id in await db(store.cancelled_among, list(self.scans)):
            task = self.scans.get(scan_id)
            if task is not None:
                task.cancel()

    async def close(self) -> None:
        """Stops everything this runner runs, and closes its session and connection."""
        tasks = [*self._chores, *self.scans.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._fetcher is not None:
            await self._fetcher.__aexit__(None, None, None)
        if self.announcer is not None:
            await asyncio.to_thread(self.announcer.close)
        # Queries already handed to the thread finish first: none outlives the runner.
        await db(close_connection)

    async def shutdown(self) -> None:
        """Writes what finished and hands the rest back to the other workers at once.

        The caller stops taking wake-ups first, so the ones sent here reach another worker.
        """
        log.info("worker %s stopping: handing its rows back", self.worker_id)
        self.stopping = True
        tasks = [*self._chores[1:], *self.scans.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        released = await db(store.release_claims, self.worker_id)
        for scan_id in released:
            await wake(scan_id)
        if self.announcer is not None:
            await asyncio.to_thread(self.announcer.close)
        log.info("worker %s handed back the rows of %d scans", self.worker_id, len(released))


async def wake(scan_id: uuid.UUID | str) -> None:
    """Asks some worker to run a scan; a wake-up the layer refuses waits for a sweep."""
    message = {"type": "scan.start", "scan_id": str(scan_id)}
    try:
        await get_channel_layer().send(SCAN_JOBS, message)
    except Exception:
        log.exception("could not wake a worker for scan %s; a sweep will find it", scan_id)


def _ms_since(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 1)


class ScanRun:
    """One scan in one worker: a pool of fetch loops, as many as this worker's share of the
    scan's concurrency, and a flusher."""

    def __init__(self, runner: Runner, scan_id: uuid.UUID, plan: ScanPlan):
        self.runner = runner
        self.scan_id = scan_id
        self.plan = plan
        self.queue: deque[Claimed] = deque()
        # This worker's part of the scan's concurrency, counted again when it claims (at
        # most every RECOUNT_S): the fetch loops running, and the most that may.
        self.share = plan.concurrency
        # In a web process the runner is the only one there is: its share is all of it.
        self.alone = settings.SCANS_RUN_IN_WEB
        self.recount_at = 0.0
        self.looping = 0
        self.loops: asyncio.TaskGroup | None = None
        self.finished: list[tuple[Claimed, Fetched]] = []
        self.fetching: dict[int, float] = {}
        self.exhausted = False
        self.stopping = False
        self.claiming = asyncio.Lock()
        self.failing_since: float | None = None
        self.shared = False
        self.announcing: asyncio.Future | None = None
        self.gone = False
        # Offsets are from the scan's start, wherever and whenever that was.
        self.scan_start = time.monotonic() - (time.time() - plan.started_epoch)

    async def run(self) -> None:
        flusher = asyncio.create_task(self._flush_forever())
        try:
            # One loop failing stops the others: none may go on claiming unwatched.
            # The first claim tells how many more to start.
            async with asyncio.TaskGroup() as self.loops:
                self._start_loops(1)
        finally:
            # Let a write in progress finish: cancelling it would lose its message.
            self.stopping = True
            await flusher
            await self._flush()
            if not self.alone:
                with suppress(Exception):  # else its place runs out with its lease
                    await db(store.leave_scan, self.scan_id, self.runner.worker_id)
            if self.announcing is not None:
                # Not cancelled with the run (a second cancel must not cut a send short),
                # and not waited for forever: a layer that hangs loses hints, not results.
                await asyncio.wait([self.announcing], timeout=LAST_ANNOUNCE_WAIT_S)

    def _start_loops(self, up_to: int) -> None:
        while self.looping < up_to:
            self.looping += 1
            self.loops.create_task(self._fetch_loop())

    async def _fetch_loop(self) -> None:
        try:
            await self._fetch_in_turn()
        finally:
            self.looping -= 1

    async def _fetch_in_turn(self) -> None:
        fetcher = await self.runner.fetcher()
        # A loop beyond this worker's share stops; one always stays to empty the queue.
        while self.looping <= max(self.share, 1) and (claimed := await self._next()) is not None:
            if claimed.attempts > settings.SCANS_MAX_ATTEMPTS:
                fetched = Fetched(
                    url=claimed.url,
                    error="other",
                    error_message=f"gave up: {claimed.attempts - 1} workers stopped fetching it",
                )
            else:
                position = claimed.position
                async with self.runner.gate:
                    self.fetching[position] = _ms_since(self.scan_start)
                    waits = functools.partial(self._under_way, position)
                    try:
                        fetched = await fetcher.fetch(
                            claimed.url, self.scan_start, self.plan.timeout_s, waits
                        )
                    finally:
                        self.fetching.pop(position, None)
            self.finished.append((claimed, fetched))

    def _under_way(self, position: int, start_ms: float | None) -> None:
        """A fetch waiting for its host is not under way, and not shown as such."""
        if start_ms is None:
            self.fetching.pop(position, None)
        else:
            self.fetching[position] = start_ms

    async def _next(self) -> Claimed | None:
        """The next row to fetch. Claims the next batch while half of this one is still
        queued, so the other fetch loops never sit idle at a batch boundary.

        A worker beside others counts the workers on the scan again, at most every
        RECOUNT_S, and takes its share of the scan's concurrency: batches of that many
        rows, and as many fetch loops. It counts also when no claim is due, so that a
        share left by others is taken up while this worker empties its queue.
        """
        if self._low() and not self.exhausted and (not self.queue or not self.claiming.locked()):
            async with self.claiming:
                if self._low() and not self.exhausted:
                    rows = await self._claim()
                    self.queue.extend(rows)
                    self.exhausted = not rows
                    self._start_loops(self.share)
                    await self._wake_another(len(rows))
        elif self._recount_due() and not self.claiming.locked():
            async with self.claiming:
                if self._recount_due():
                    self._recounted()
                    self.share = await db(
                        store.share_for, self.scan_id, self.runner.worker_id, self.plan.concurrency
                    )
                    self._start_loops(self.share)
        return self.queue.popleft() if self.queue else None

    async def _claim(self) -> list[Claimed]:
        """Claims a batch of this worker's share, counting the workers first when that is due
        (each count is two more statements)."""
        worker_id = self.runner.worker_id
        if not self._recount_due():
            return await db(store.claim, self.scan_id, worker_id, self.share)
        self._recounted()
        self.share, rows = await db(
            store.claim_share, self.scan_id, worker_id, self.plan.concurrency
        )
        return rows

    def _recount_due(self) -> bool:
        return not self.alone and asyncio.get_running_loop().time() >= self.recount_at

    def _recounted(self) -> None:
        self.recount_at = asyncio.get_running_loop().time() + RECOUNT_S

    def _low(self) -> bool:
        return len(self.queue) <= self.share // 2

    async def _wake_another(self, claimed: int) -> None:
        """After a first full batch, wakes one more worker to share the rest of the scan.

        Redis hands the wake-up to the worker that has waited longest, which passes
        it on in turn, so a big scan reaches every idle worker, not only at sweeps,
        until a newcomer finds no share of its concurrency left, or no rows.
        """
        if self.shared or self.alone:
            return
        self.shared = True
        if claimed and claimed == self.share:
            await wake(self.scan_id)

    async def _flush_forever(self) -> None:
        """Starts a write every SCANS_FLUSH_SECONDS, however long the last one took: a
        result waits at most about that long for its write to start, not that plus a write."""
        loop = asyncio.get_running_loop()
        every = settings.SCANS_FLUSH_SECONDS
        while not self.stopping:
            due = loop.time() + every
            await self._flush()
            await asyncio.sleep(due - loop.time())

    async def _flush(self) -> None:
        if not self.finished:
            return
        batch, self.finished = self.finished, []
        try:
            message = await db(store.write_results, self.scan_id, self.runner.worker_id, batch)
        except Scan.DoesNotExist:
            # Deleted while it ran (in the admin), its rows with it: nothing to write, and
            # the watcher stops the fetches at its next look.
            if not self.gone:
                log.info("scan %s was deleted while it ran: its results are dropped", self.scan_id)
            self.gone = self.exhausted = True
            self.queue.clear()
            return
        except Exception:
            log.exception("worker %s could not write results", self.runner.worker_id)
            # Nothing of it was written: keep it for the next flush, for as long
            # as our claims can hold. Then the run ends and its rows go back.
            self.finished[:0] = batch
            self.failing_since = self.failing_since or time.monotonic()
            if time.monotonic() - self.failing_since > settings.SCANS_LEASE_SECONDS:
                self.exhausted = True
                self.queue.clear()
                raise
            return
        self.failing_since = None
        if message["results"]:
            # The fetches under way ride along, so a page's waterfall can grow their bars.
            message["fetching"] = list(self.fetching.items())
            self._announce_in_order(message)

    def _announce_in_order(self, message: dict) -> None:
        """Sends the message after the ones before it, without holding up the next write."""
        sent = self.runner.announcer.send(self.scan_id, message)
        if sent is not None:
            self.announcing = asyncio.wrap_future(sent)


_runner: Runner | None = None


def get_runner() -> Runner:
    global _runner
    if _runner is None:
        _runner = Runner()
    return _runner
