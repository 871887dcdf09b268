"""The in-memory channel layer of a web process that runs scans itself (no Redis)."""

from __future__ import annotations

import time

from channels import layers

CLEAN_EVERY_S = 1.0


class InMemoryChannelLayer(layers.InMemoryChannelLayer):
    """Channels' in-memory layer, sweeping expired messages once a second.

    Channels sweeps every channel and every group member on each receive. When each
    socket had a channel of its own, a scan's progress message woke all of them: with
    200 sockets, 200 sweeps of 200 channels a message, a fifth of the web process's time.
    Since scans.relay a message wakes one channel per process, so this matters far less;
    it is kept as it is (not measured again). A message still expires (and a channel
    that never reads leaves its groups), up to a second later.
    """

    _cleaned_at = float("-inf")

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._cleaned_at >= CLEAN_EVERY_S:
            self._cleaned_at = now
            super()._clean_expired()
