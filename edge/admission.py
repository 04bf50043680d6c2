"""Per-worker admission: a cap on requests that call Dify at the same time.

Beyond the cap a request is refused at once with 503 and `Retry-After` (clients retry
later, or another worker or instance takes it) instead of waiting in an unbounded queue
while its client times out. gevent runs one request at a time per worker, so a plain
counter is exact.
"""

from __future__ import annotations


class Admission:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def try_enter(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1
