"""A Dify event stream opened and read by a background greenlet.

The request greenlet must be able to wait for Dify *with a time limit*: to bound the wait
for the first event before committing to HTTP 200, to send `: ping` while Dify is silent,
and to pace text. Dify sends its response headers only with its first event, and a blocking
socket read cannot be interrupted safely, so one greenlet per stream makes the request and
does the reading, and hands whole network reads (or the failure) over a small queue; the
queue's bound pushes back on Dify when the client reads slowly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import gevent
import requests
from gevent.queue import Empty, Full, Queue

from services.dify_client import iter_body
from services.errors import OpenAIError, server_error, upstream_timeout
from services.sse import MalformedStream, SSEDecoder

log = logging.getLogger(__name__)

_END = object()
_WAKE = object()
# Network reads buffered ahead of the client; beyond this the reader waits (backpressure).
_QUEUE_SIZE = 64
# How long a finished stream may take to reach the end of Dify's body, so that its
# connection goes back to the pool instead of being dropped.
_DRAIN_SECONDS = 2.0


class UpstreamStream:
    def __init__(self, open_response: Callable[[], requests.Response]) -> None:
        """`open_response` makes the Dify call; it raises OpenAIError when Dify refuses it."""
        self._open_response = open_response
        self._response: requests.Response | None = None
        self._decoder = SSEDecoder()
        self._queue: Queue = Queue(_QUEUE_SIZE)
        self._ended = False
        self._reader_finished = False  # the reader's last item (end or failure) was taken
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        try:
            self._response = self._open_response()
        except OpenAIError as exc:
            self._queue.put(exc)
            return
        except Exception:  # a bug must end this stream with an error, never leave it waiting
            log.exception("calling Dify failed")
            self._queue.put(server_error("the gateway failed to call Dify", 500))
            return
        try:
            for data in iter_body(self._response):
                if data:
                    self._queue.put(data)
            self._queue.put(_END)
        except Exception as exc:  # timeouts, resets, protocol errors: all mean the stream broke
            self._queue.put(_read_failure(exc))

    def wake(self) -> None:
        """Make a waiting `read` return now (with what it has, maybe nothing)."""
        with contextlib.suppress(Full):  # a full queue: the reader is not waiting anyway
            self._queue.put_nowait(_WAKE)

    def read(self, timeout: float | None) -> list[dict[str, Any]] | None:
        """Events that arrived, waiting at most `timeout` s: [] if none came (or on `wake`),
        None at the end."""
        if self._ended:
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except Empty:
            return []
        events = []
        while True:
            if item is _WAKE:
                return events
            if item is _END:
                self._ended = self._reader_finished = True
                events.extend(self._decoder.close())
                return events or None
            if isinstance(item, OpenAIError):
                self._ended = self._reader_finished = True
                raise item
            try:
                events.extend(self._decoder.feed(item))
            except MalformedStream as exc:
                self._ended = True
                raise server_error(f"Dify sent a malformed stream: {exc}", 502, "upstream_error") from None
            # Take whatever else is already queued: one client write for several Dify reads.
            if self._queue.empty():
                return events
            item = self._queue.get_nowait()

    def close(self, finished: bool) -> None:
        """Release the upstream connection.

        After a terminal event (`finished`) the rest of the body (normally just the end of
        the chunked encoding) is drained in the background so the connection goes back to
        the pool; otherwise (client gone, error) the connection is dropped at once.
        """
        if self._reader.dead or self._reader_finished:  # the reader is out of its socket read
            self._close_response()
        elif finished:
            gevent.spawn(self._drain_then_close)
        else:
            self._stop_reader()

    def _close_response(self) -> None:
        if self._response is None:
            return
        try:
            self._response.close()
        except Exception:  # cleanup must never turn a finished answer into a failure
            log.warning("closing the Dify response failed", exc_info=True)

    def _drain_then_close(self) -> None:
        if self._wait_for_end(_DRAIN_SECONDS):
            self._close_response()
        else:
            self._stop_reader()

    def _stop_reader(self) -> None:
        # The reader must leave its blocking read before the response is closed: closing a
        # buffered reader that another greenlet is inside raises "reentrant call".
        self._reader.kill(block=True, timeout=1)
        self._close_response()

    def _wait_for_end(self, seconds: float) -> bool:
        """Discard queued data until the body ends; False if it does not end in time."""
        deadline = gevent.Timeout(seconds, False)
        with deadline:
            while True:
                item = self._queue.get()
                if item is _END or isinstance(item, OpenAIError):
                    return True  # (a stray _WAKE is simply discarded)
        return False


def _read_failure(exc: Exception) -> OpenAIError:
    text = f"{type(exc).__name__}: {exc}".lower()
    if "timed out" in text or "timeout" in text:
        return upstream_timeout("no data from Dify within TIMEOUT seconds")
    return server_error("the connection to Dify broke mid-stream", 502, "upstream_disconnected")
