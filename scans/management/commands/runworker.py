"""``runworker scan-jobs``: Channels' worker, which also sweeps for work and stops cleanly.

Channels' worker runs no code until its first message; ours starts the
runner at once, so a worker that starts after a wake-up was lost still finds
the scan. On SIGTERM (or Ctrl-C) it stops taking wake-ups, writes what it has
fetched, hands its unfinished rows back and wakes another worker for them.
Without Redis it goes on with what its sweeps find, and listens again when
Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from channels.management.commands import runworker
from channels.worker import Worker

from scans.runner import get_runner

log = logging.getLogger(__name__)

RELISTEN_S = 2.0


class ScanWorker(Worker):
    async def handle(self) -> None:
        runner = get_runner()
        runner.ensure_started()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        listeners = [asyncio.ensure_future(self.listener(name)) for name in self.channels]
        log.info("worker %s listening on %s", runner.worker_id, ", ".join(self.channels))
        await stop.wait()
        for task in listeners:
            task.cancel()
        await runner.shutdown()

    async def listener(self, channel: str) -> None:
        while True:
            try:
                await super().listener(channel)
            except Exception:
                log.exception("no wake-ups on %s; listening again in %g s", channel, RELISTEN_S)
                await asyncio.sleep(RELISTEN_S)


class Command(runworker.Command):
    worker_class = ScanWorker
