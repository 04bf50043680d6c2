"""One Dify run relayed to one client.

`Relay` reads the upstream stream, runs each Dify event through the translator and the
output pipeline, and hands out batches of output items (core/items.py): several Dify events
that arrived together become one batch (one client write). While Dify is silent it hands out
a keep-alive item every KEEPALIVE_INTERVAL. When the relay is closed before Dify finished
(client gone, upstream fault, stop sequence, deadline) the upstream connection is dropped
and the run's task is stopped, in the background; when Dify has not named the task yet (its
headers come with its first event), the background first reads on until it does, at most
TIMEOUT. An unexpected exception while decoding or translating ends the answer with an error
item (502), as a fault of Dify's would.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import gevent
from gevent.queue import Queue

from core.errors import OpenAIError, upstream_failure, upstream_timeout
from core.items import ERROR, PING, PING_ITEM, Item
from core.response.pipeline import OutputPipeline
from core.response.smooth import SmoothPacer
from core.response.translate import DifyEventTranslator
from dify_io import metrics
from dify_io.client_watch import ClientWatch
from dify_io.request_context import spawn
from dify_io.run import DifyRun
from dify_io.upstream import UpstreamStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayTiming:
    """KEEPALIVE_INTERVAL: seconds of Dify silence before a keep-alive item; STREAM_DEADLINE:
    seconds after which the answer ends with an error whatever Dify does."""

    keepalive_interval: float = 10.0
    deadline_seconds: float = 1200.0


DEFAULT_TIMING = RelayTiming()


class Relay:
    __slots__ = ("_run", "_upstream", "_watch", "client_gone", "_deadline", "_pacer", "_keepalive", "translator",
                 "_pipeline", "_done")

    def __init__(self, run: DifyRun, payload: dict[str, Any], translator: DifyEventTranslator,
                 pipeline: OutputPipeline | None = None, pacer: SmoothPacer | None = None,
                 client_socket: Any = None, timing: RelayTiming = DEFAULT_TIMING) -> None:
        """Starts `run` with `payload` at once. `client_socket` (the WSGI server's, when it
        offers one) is watched so that a client that leaves while Dify is silent is noticed at
        once; `pacer` spreads bursts of text over time (SMOOTH_OUTPUT, streams only)."""
        self._run = run
        self._upstream = UpstreamStream(partial(run.start, payload), run.client.timeout)
        self._watch = ClientWatch(client_socket, self._upstream.wake) if client_socket is not None else None
        self.client_gone = False
        self._deadline = time.monotonic() + timing.deadline_seconds
        self._pacer = pacer
        self._keepalive = timing.keepalive_interval
        self.translator = translator
        self._pipeline = pipeline if pipeline is not None and pipeline.active else None
        self._done = False

    def _next_batch(self, timeout: float) -> list[Item]:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self._done = True
            error = upstream_timeout("the stream reached its deadline (STREAM_DEADLINE)")
            metrics.upstream_error(error)
            items: list[Item] = [(ERROR, error)]
            return self._pipeline.process(items) if self._pipeline else items
        try:
            events = self._upstream.read(min(timeout, remaining))
            if events is None:
                items = self.translator.feed_eof()
            elif not events:
                if self._watch and self._watch.fired and self._watch.client_gone():
                    self._done = self.client_gone = True
                    return []
                return [PING_ITEM]
            else:
                items = []
                feed = self.translator.feed
                for event in events:
                    items += feed(event)
                    if self.translator.finished:
                        break
        except OpenAIError as exc:
            self._done = True
            metrics.upstream_error(exc)
            items = [(ERROR, exc)]
        except Exception:  # a bug decoding or translating must end the answer with an error, not cut it
            self._done = True
            return [(ERROR, _relay_failure())]
        else:
            if self.translator.finished:
                self._done = True
                for kind, value in items:  # Dify's own `error` event, or a failed workflow
                    if kind == ERROR:
                        metrics.upstream_error(value)
        if not self._pipeline or not items:
            return items
        try:
            items = self._pipeline.process(items)
        except Exception:
            self._done = True
            return [(ERROR, _relay_failure())]
        if self._pipeline.ended:
            self._done = True  # a stop sequence: close() stops the Dify task
        return items

    @property
    def done(self) -> bool:
        """Dify's answer ended (or failed, or was cut by a stop sequence or the deadline)."""
        return self._done

    def prefetch(self, wait: float) -> list[Item]:
        """Items up to the first one that is not a keep-alive, waiting at most `wait` s.

        A stream request is committed to HTTP 200 only after this, so a Dify failure before
        the first token (its refusal of the call included) can still be answered with a real
        HTTP status.
        """
        deadline = time.monotonic() + wait
        items: list[Item] = []
        while not self._done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch = self._next_batch(remaining)
            if self._pacer:
                batch = self._pacer.push(batch, time.monotonic())
            batch = [item for item in batch if item[0] != PING]
            items += batch
            if batch:
                break
        return items

    def next_batch(self) -> list[Item] | None:
        """The next items to write, waiting for them; None once the relay is done.

        A plain method, not a generator: the body generator calls it directly, and every level
        of generators would deepen the stack each held stream keeps while it waits."""
        if self._pacer is not None:
            return self._next_paced(self._pacer)
        while not self._done:
            batch = self._next_batch(self._keepalive)
            if batch:
                return batch
        return None

    def _next_paced(self, pacer: SmoothPacer) -> list[Item] | None:
        """The same, through the pacer: wait for Dify only until the pacer's next piece is
        due, and after Dify's end keep going until the pacer is empty."""
        while True:
            now = time.monotonic()
            deadline = pacer.next_deadline()
            if deadline is not None and deadline <= now:
                batch = pacer.due(now)
            elif self._done:
                if deadline is None or self.client_gone:
                    return None
                gevent.sleep(deadline - now)
                continue
            else:
                wait = self._keepalive if deadline is None else min(self._keepalive, deadline - now)
                batch = pacer.push(self._next_batch(wait), time.monotonic())
            if batch:
                return batch

    def close(self) -> None:
        if self._watch:
            self._watch.close()
            self._watch = None
        finished, task_id = self.translator.finished, self.translator.task_id
        if finished or task_id or self._upstream.ended:
            self._upstream.close(finished)
            if not finished and task_id:
                spawn(self._run.stop, task_id)
        else:
            spawn(self._stop_once_named)  # Dify has not named its task yet

    def _stop_once_named(self) -> None:
        """In the background: read on until Dify names the task (at most TIMEOUT), stop it with
        the run's user, then drop the connection."""
        try:
            task_id = self._upstream.first_task_id()
            if task_id:
                self._run.stop(task_id)
        finally:
            self._upstream.close(False)


def _relay_failure() -> OpenAIError:
    """The error for an unexpected exception (being handled) while relaying: logged, counted."""
    log.exception("relaying Dify's answer failed")
    error = upstream_failure("the gateway failed to relay Dify's answer", 502)
    metrics.upstream_error(error)
    return error


def prefetch_all(relays: list[Relay], wait: float) -> list[list[Item]]:
    """Each relay's first items (see `Relay.prefetch`); the relays run concurrently, so
    this waits about as long as the slowest. Every relay is closed if this fails."""
    deadline = time.monotonic() + wait
    try:
        prefetched = []
        # A loop, not a comprehension (a frame of its own): this call is on the deepest path of
        # a stream, and each stream's greenlet keeps as many 4 KiB pages of Python frames as its
        # deepest call ever used.
        for relay in relays:
            prefetched.append(relay.prefetch(max(0.0, deadline - time.monotonic())))
        return prefetched
    except BaseException:
        for relay in relays:
            relay.close()
        raise


def raise_first_refusal(relays: list[Relay], prefetched: list[list[Item]]) -> None:
    """If Dify refused any choice before its first token, close them all and raise that
    error: the client gets a real HTTP status."""
    for items in prefetched:
        if items and items[0][0] == ERROR:
            for relay in relays:
                relay.close()
            raise items[0][1]


class MergedBatches:
    """Every relay's batches tagged with its choice index, as they arrive: `next()` waits for
    the next (index, batch), None once every relay is done.

    One relay is read directly; several are read by one greenlet each, so a slow choice
    never holds back the others. `close` stops those greenlets (before the relays close).
    """

    __slots__ = ("_relays", "_arrivals", "_pumps", "_running")

    def __init__(self, relays: list[Relay]) -> None:
        self._relays = relays
        self._arrivals: Queue | None = None
        self._pumps: list[gevent.Greenlet] = []
        self._running = 0

    def next(self) -> tuple[int, list[Item]] | None:
        if len(self._relays) == 1:
            batch = self._relays[0].next_batch()
            return None if batch is None else (0, batch)
        if self._arrivals is None:
            self._arrivals = Queue()
            self._pumps = [spawn(self._pump, index, relay) for index, relay in enumerate(self._relays)]
            self._running = len(self._pumps)
        while self._running:
            index, batch = self._arrivals.get()
            if batch is not None:
                return index, batch
            self._running -= 1
        return None

    def _pump(self, index: int, relay: Relay) -> None:
        assert self._arrivals is not None
        try:
            while (batch := relay.next_batch()) is not None:
                self._arrivals.put((index, batch))
        except Exception:  # this choice must end with an error, not silently
            self._arrivals.put((index, [(ERROR, _relay_failure())]))
        finally:
            self._arrivals.put((index, None))

    def close(self) -> None:
        gevent.killall(self._pumps)
