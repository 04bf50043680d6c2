"""Counting content events in an SSE body as it arrives, without decoding JSON.

The body is cut at event boundaries (a blank line), so a marker is never split across two
network reads; each complete event is searched for the target's content marker.
"""

from __future__ import annotations

import time


class EventCounter:
    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.count = 0
        self.first_at: float | None = None  # perf_counter() when the first content event was complete
        self._pending = b""

    def feed(self, data: bytes) -> None:
        if self._pending:
            data = self._pending + data
        complete, _, self._pending = data.rpartition(b"\n\n")
        found = complete.count(self.marker)
        if found:
            if self.first_at is None:
                self.first_at = time.perf_counter()
            self.count += found
