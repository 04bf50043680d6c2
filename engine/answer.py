"""What the engine hands back for one request: its Dify runs, committed and ready to render.

By the time an `Answer` exists every run has delivered its first items or waited
FIRST_EVENT_WAIT for them, and none was refused: a failure before the first token was
raised instead, so the client gets a real HTTP status. `first` holds what arrived before
that point (`take_first()`), `next()` waits for the rest, `close()` ends every run (called by the rendering
when it is done or the client left). A stream's writes to the client are bounded
(`bound_writes`): a client that stops reading ends its stream as one that left.

The Answer also sees every item it hands to the rendering, so it knows when the first output
(an item that is neither a keep-alive nor an error) went out, for the time to first token
(`on_first_output`), and whether the rendering stopped at an error (the server's choice: an
error ends the whole stream, other choices unfinished) or because the client left.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from core.items import ERROR, PING, USAGE_KEYS, Item
from core.response.render import add_usage
from dify_io import metrics
from dify_io.client_watch import WriteLimit
from dify_io.relay import MergedBatches, Relay


class Answer:
    __slots__ = ("_relays", "_batches", "_first", "conversation_id", "message_id", "on_first_output", "_failed",
                 "_writes")

    def __init__(self, relays: list[Relay], prefetched: list[list[Item]], conversation_id: str | None = None,
                 message_id: str | None = None) -> None:
        self._relays = relays
        self._batches = MergedBatches(relays)
        self._first = [(index, items) for index, items in enumerate(prefetched) if items]
        self.conversation_id = conversation_id  # the Dify conversation the answer belongs to, if any
        self.message_id = message_id  # and its Dify message (of the first choice)
        # Called once, with time.perf_counter(), when the first output is handed to the rendering.
        self.on_first_output: Callable[[float], None] | None = None
        self._failed = False  # an ERROR item was handed out: the rendering ends there
        self._writes: WriteLimit | None = None  # bounds the rendering's writes to the client (streams)

    def dify_ids(self) -> tuple[str | None, str | None] | None:
        """(conversation id, message id) of the first choice as Dify's first event named them,
        which may be after the commit (FIRST_EVENT_WAIT): the Responses API's ids carry them. An
        id Dify did not name is None; None while Dify has said nothing yet."""
        translator = self._relays[0].translator
        if translator.task_id is None and not translator.finished:
            return None
        return translator.conversation_id or self.conversation_id, translator.message_id

    def take_first(self) -> list[tuple[int, list[Item]]]:
        """What arrived before the answer was committed, as (choice index, items); handed out
        once, so that a held stream does not keep it."""
        first, self._first = self._first, []
        for _, items in first:
            self._handed_out(items)
        return first

    def bound_writes(self, writes: WriteLimit) -> None:
        """Bound every write of the rendering (a stream's): `writes` is armed from now to the
        first `next()`, and again from each `next()`'s return to the following call (the write of
        what it returned). The rendering disarms it for good once the body is closed."""
        self._writes = writes
        writes.arm()

    def next(self) -> tuple[int, list[Item]] | None:
        """Waits for the next (choice index, items); None at the end."""
        writes = self._writes
        if writes is not None:
            writes.disarm()  # asked for more: the last write went out
        batch = self._batches.next()
        if batch is not None:
            self._handed_out(batch[1])
        if writes is not None:
            writes.arm()  # the write of this batch, or at the end of the stream's ending
        return batch

    def _handed_out(self, items: list[Item]) -> None:
        """Note an ERROR (the last item of its relay's batch: the relay ends there) and, until
        it came, the first output; after that a batch costs one look at its last item."""
        if items and items[-1][0] == ERROR:
            self._failed = True
        if self.on_first_output is not None and any(kind != PING and kind != ERROR for kind, _ in items):
            notify, self.on_first_output = self.on_first_output, None
            notify(time.perf_counter())

    def close(self) -> None:
        relays = self._relays
        # The client left: noticed while Dify was silent, or the rendering was closed before every
        # choice ended without an error having ended it (an error ends the whole stream by design).
        if any(relay.client_gone for relay in relays) or not (self._failed or all(relay.done for relay in relays)):
            metrics.client_disconnect()
        self.on_first_output = None
        self._batches.close()  # the readers of several choices stop before their relays close
        for relay in relays:
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
