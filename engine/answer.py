"""What the engine hands back for one request: its Dify runs, committed and ready to render.

By the time an `Answer` exists every run has delivered its first items or waited
FIRST_EVENT_WAIT for them, and none was refused: a failure before the first token was
raised instead, so the client gets a real HTTP status. `first` holds what arrived before
that point (`take_first()`), `next()` waits for the rest, `close()` ends every run (called by the rendering
when it is done or the client left).
"""

from __future__ import annotations

from core.items import Item
from dify_io.relay import MergedBatches, Relay


class Answer:
    __slots__ = ("_relays", "_batches", "_first", "next", "conversation_id")

    def __init__(self, relays: list[Relay], prefetched: list[list[Item]], conversation_id: str | None = None) -> None:
        self._relays = relays
        self._batches = MergedBatches(relays)
        self._first = [(index, items) for index, items in enumerate(prefetched) if items]
        self.next = self._batches.next  # waits for the next (choice index, items); None at the end
        self.conversation_id = conversation_id  # the Dify conversation the answer belongs to, if any

    def take_first(self) -> list[tuple[int, list[Item]]]:
        """What arrived before the answer was committed, as (choice index, items); handed out
        once, so that a held stream does not keep it."""
        first, self._first = self._first, []
        return first

    def close(self) -> None:
        self._batches.close()  # the readers of several choices stop before their relays close
        for relay in self._relays:
            relay.close()

