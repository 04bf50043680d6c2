"""What the engine hands back for one request: its Dify runs, committed and ready to render.

By the time an `Answer` exists every run has delivered its first items or waited
FIRST_EVENT_WAIT for them, and none was refused: a failure before the first token was
raised instead, so the client gets a real HTTP status. `first` holds what arrived before
that point (`take_first()`), `next()` waits for the rest, `close()` ends every run (called by the rendering
when it is done or the client left).
"""

from __future__ import annotations

from core.items import USAGE_KEYS, Item
from core.response.render import add_usage
from dify_io import metrics
from dify_io.relay import MergedBatches, Relay


class Answer:
    __slots__ = ("_relays", "_batches", "_first", "next", "conversation_id", "message_id")

    def __init__(self, relays: list[Relay], prefetched: list[list[Item]], conversation_id: str | None = None,
                 message_id: str | None = None) -> None:
        self._relays = relays
        self._batches = MergedBatches(relays)
        self._first = [(index, items) for index, items in enumerate(prefetched) if items]
        self.next = self._batches.next  # waits for the next (choice index, items); None at the end
        self.conversation_id = conversation_id  # the Dify conversation the answer belongs to, if any
        self.message_id = message_id  # and its Dify message (of the first choice)

    def take_first(self) -> list[tuple[int, list[Item]]]:
        """What arrived before the answer was committed, as (choice index, items); handed out
        once, so that a held stream does not keep it."""
        first, self._first = self._first, []
        return first

    def close(self) -> None:
        if any(relay.client_gone or not relay.done for relay in self._relays):
            metrics.client_disconnect()  # the client left before the answer was complete
        self._batches.close()  # the readers of several choices stop before their relays close
        for relay in self._relays:
            relay.close()

    def summary(self) -> tuple[dict[str, int], list[str], str | None]:
        """(usage summed over the choices, Dify task ids, conversation id), as far as known."""
        usage = dict.fromkeys(USAGE_KEYS, 0)
        task_ids = []
        for relay in self._relays:
            translator = relay.translator
            add_usage(usage, translator.usage)
            if translator.task_id:
                task_ids.append(translator.task_id)
        return usage, task_ids, self.conversation_id

