"""``runworker scan-jobs``: Channels' worker, which also sweeps for work and stops cleanly.

Channels' worker runs no code until its first message; ours starts the
runner at once, so a worker that starts after a wake-up was lost still finds
the scan, and on SIGTERM it hands its unfinished rows back to the others.
"""

from __future__ import annotations

from channels.management.commands import runworker
from channels.worker import Worker

from scans.runner import get_runner


class ScanWorker(Worker):
    async def handle(self) -> None:
        runner = get_runner()
        runner.ensure_started()
        runner.stop_on_sigterm()
        await super().handle()


class Command(runworker.Command):
    worker_class = ScanWorker
