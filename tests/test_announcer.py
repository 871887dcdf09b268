"""A worker's announcer against a Redis that accepts connections and never answers.

The server here is a socket that says nothing: the real Redis cannot be made to hang
on cue. Progress is a hint (pages read the database at a gap in ``seq``), so such a
Redis may cost hints, but never a worker's memory or its shutdown.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from django.test import override_settings

from scans.announcer import MAX_WAITING, SEND_TIMEOUT_S, Announcer


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A TCP server on loopback that accepts every connection and never sends a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept_forever() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept_forever, daemon=True).start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.close()
    for connection in held:
        connection.close()


def test_a_silent_redis_costs_hints_not_memory_or_shutdown(silent_redis):
    layers = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": silent_redis, "socket_timeout": 15}]},
        },
        "progress": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": silent_redis, "socket_timeout": 15}]},
        },
    }
    with override_settings(CHANNEL_LAYERS=layers):
        announcer = Announcer.for_this_process()
        assert announcer is not None
        message = {"seq": 1, "scan": {}, "results": []}
        sent = [announcer.send("some-scan", message) for _ in range(MAX_WAITING + 20)]

        # Past MAX_WAITING waiting, new messages are dropped at once, not queued.
        assert all(f is not None for f in sent[:MAX_WAITING])
        assert sent[MAX_WAITING:] == [None] * 20
        # The first gives up after SEND_TIMEOUT_S, not Redis's 15 s socket timeout.
        started = time.monotonic()
        concurrent.futures.wait([sent[0]], timeout=SEND_TIMEOUT_S + 5)
        assert sent[0].done()
        assert time.monotonic() - started < SEND_TIMEOUT_S + 2
        # Closing does not wait for the hundred still queued.
        started = time.monotonic()
        announcer.close()
        assert time.monotonic() - started < SEND_TIMEOUT_S + 2
