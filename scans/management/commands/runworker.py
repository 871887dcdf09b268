"""``runworker scan-jobs``: Channels' worker, which also sweeps for work and stops cleanly.

Channels' worker runs no code until its first message; ours starts the
runner at once, so a worker that starts after a wake-up was lost still finds
the scan. On SIGTERM (or Ctrl-C) it stops taking wake-ups, writes what it has
fetched, hands its unfinished rows back and wakes another worker for them.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from channels.management.commands import runworker
from channels.worker import Worker

from scans.runner import get_runner

log = logging.getLogger(__name__)


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
        stopped = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopped, *listeners], return_when=asyncio.FIRST_COMPLETED)
        for task in [stopped, *listeners]:
            task.cancel()
        await runner.shutdown()
        # A listener that ended on its own failed (the layer is gone): say why.
        for task in done - {stopped}:
            task.result()


class Command(runworker.Command):
    worker_class = ScanWorker
