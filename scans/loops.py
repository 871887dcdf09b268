"""Event loops on threads of their own, for work that must not wait behind a busy loop."""

from __future__ import annotations

import asyncio
import threading


def start_loop_thread(name: str) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """A new event loop, run on a daemon thread called ``name`` until it is stopped, then
    closed (channels-redis closes a loop's connections as the loop closes)."""
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return loop, thread
