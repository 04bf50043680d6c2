"""A Dify event stream, read by the greenlet that relays it.

The relay waits for Dify *with a time limit*: to bound the wait for the first event before
committing to HTTP 200, to send `: ping` while Dify is silent, to pace text, and to stop
waiting at once when the client leaves (`wake`). Two things make that possible without a
second greenlet reading each stream (its saved stack, Python data stack and hand-over queue
were most of a held stream's memory):

- Dify sends its response headers only with its first event, and a wait inside
  http.client's header parsing cannot be cut short without losing bytes. So a short-lived
  greenlet makes the call through the pooled session and ends once the headers are in.
- Then the body is read straight from the connection's socket, one `recv` at a time, and
  its framing undone by core/response/http_body.py. A wait in `recv` can be interrupted without
  losing a byte, so the relay's own greenlet does that waiting.

Dify's socket is read only when the client is ready for more, so a slow client pushes back
on Dify through TCP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
import requests
from greenlet import getcurrent

from core.errors import OpenAIError, server_error, upstream_failure, upstream_timeout
from core.response.http_body import ChunkedBody, LengthBody, MalformedBody, UntilClose
from core.response.sse import MalformedStream, SSEDecoder
from dify_io.connection import detach, forget_response
from dify_io.request_context import spawn

log = logging.getLogger(__name__)

# How long a finished stream may take to reach the end of Dify's body, so that its
# connection goes back to the pool instead of being dropped.
_DRAIN_SECONDS = 2.0
_RECV_BYTES = 65536


class _Interrupted(BaseException):
    """Thrown into the greenlet waiting for Dify when its time limit passes or `wake` is called."""


class UpstreamStream:
    __slots__ = ("_opener", "_silence_limit", "_body", "_decoder", "_waiting", "_woken", "_ended")

    def __init__(self, open_response: Callable[[], requests.Response], silence_limit: float) -> None:
        """`open_response` makes the Dify call; it raises OpenAIError when Dify refuses it.
        After `silence_limit` s without a byte from Dify (TIMEOUT) the stream fails."""
        self._opener: gevent.Greenlet | None = spawn(_open, open_response)
        self._silence_limit = silence_limit
        self._body: DifyBody | None = None
        self._decoder = SSEDecoder()
        self._waiting: Any = None  # the greenlet inside `_wait`, which `wake` interrupts
        self._woken = False
        self._ended = False

    def wake(self) -> None:
        """Make a waiting `read` return now, with nothing (called from the event loop)."""
        waiting, self._waiting = self._waiting, None
        if waiting is None:
            self._woken = True  # the next `read` returns at once
        else:
            waiting.throw(_Interrupted)

    def read(self, timeout: float | None) -> list[dict[str, Any]] | None:
        """Events that arrived, waiting at most `timeout` s: [] if none came (or on `wake`),
        None at the end."""
        if self._ended:
            return None
        try:
            data = self._wait(self._next_content, self._within_silence_limit(timeout))
        except OpenAIError:
            self._ended = True
            raise
        if data is None:
            return []
        if not data:
            self._ended = True
            return self._decoder.close() or None
        try:
            return self._decoder.feed(data)
        except MalformedStream as exc:
            self._ended = True
            raise upstream_failure(f"Dify sent a malformed stream: {exc}") from None

    def _wait(self, call: Callable[[], bytes], timeout: float | None) -> bytes | None:
        """`call()`, or None when `timeout` s pass or `wake` is called before it returns."""
        if self._woken:
            self._woken = False
            return None
        self._waiting = getcurrent()
        # A bare timer that calls `wake`, not a gevent.Timeout (an exception object with a dict
        # of its own): every held stream has one pending.
        timer = None
        if timeout is not None:
            timer = gevent.get_hub().loop.timer(timeout)
            timer.start(self.wake)
        try:
            return call()
        except _Interrupted:
            return None
        finally:
            self._waiting = None
            if timer is not None:
                timer.close()

    def _within_silence_limit(self, timeout: float | None) -> float | None:
        """`timeout`, shortened so that Dify's silence never outlasts TIMEOUT (until the headers
        came, the call's own socket timeout bounds it)."""
        if self._body is None:
            return timeout
        left = self._body.last_data_at + self._silence_limit - time.monotonic()
        if left <= 0:
            raise upstream_timeout("no data from Dify within TIMEOUT seconds")
        return left if timeout is None else min(timeout, left)

    def _next_content(self) -> bytes:
        if self._body is None:
            opened = self._opener.get()
            if not isinstance(opened, requests.Response):  # refused, or cancelled by `close`
                raise opened if isinstance(opened, OpenAIError) else server_error("the Dify call was cancelled")
            self._body = DifyBody(opened)
            self._opener = None  # with the requests.Response it holds: a held stream keeps neither
        return self._body.read()

    @property
    def ended(self) -> bool:
        """Dify's body ended, or failed: nothing more will come."""
        return self._ended

    def first_task_id(self) -> str | None:
        """For a stream closed before Dify named its task (the client left while Dify's headers,
        which come with its first event, were not in yet, or that event was not read yet): read
        on, at most TIMEOUT s, until an event names the task; None if none did in time. Run in
        the background, after the relay's own reading stopped."""
        deadline = time.monotonic() + self._silence_limit
        try:
            while (left := deadline - time.monotonic()) > 0:
                events = self.read(left)
                if events is None:
                    return None
                for event in events:
                    task_id = event.get("task_id")
                    if isinstance(task_id, str) and task_id:
                        return task_id
        except OpenAIError:
            pass  # refused, broken or silent: there is nothing to stop, or no way to name it
        return None

    def close(self, finished: bool) -> None:
        """Release the upstream connection.

        After a terminal event (`finished`) the rest of the body (normally just the end of
        the chunked encoding) is read, in the background if it has not arrived yet, so the
        connection goes back to the pool; otherwise (client gone, error) it is dropped.
        """
        body, opener = self._body, self._opener
        if body is None:
            assert opener is not None
            opener.kill(block=True, timeout=1)  # a call still in flight drops its connection
            if isinstance(opener.value, requests.Response):
                opener.value.close()
            return
        if finished and not body.ended and body.reusable:
            body.read_arrived()
        if body.ended or not finished or not body.reusable:
            body.release()
        else:
            spawn(body.finish, _DRAIN_SECONDS)


def _open(open_response: Callable[[], requests.Response]) -> requests.Response | OpenAIError:
    try:
        return open_response()
    except OpenAIError as exc:
        return exc
    except Exception:  # a bug must end this stream with an error, never leave it waiting
        log.exception("calling Dify failed")
        return server_error("the gateway failed to call Dify", 500)


class DifyBody:
    """The body of one Dify answer, read after the headers: from the connection's socket, or,
    when Dify will close the connection (http.client then hands the socket to the response),
    through http.client's own reader."""

    __slots__ = ("_until_close", "_framing", "reusable", "_fault", "last_data_at", "_connection", "_put_back",
                 "_message", "_socket", "_read_some", "_arrived")

    def __init__(self, response: requests.Response) -> None:
        message, self._connection, self._put_back = detach(response)
        # Only the connection and the way back to its pool are kept, not requests' and
        # urllib3's response objects (each with its own copy of the headers): a held stream
        # is small.
        self._until_close = not message.chunked and message.length is None
        self._framing = (ChunkedBody() if message.chunked else
                         UntilClose() if self._until_close else LengthBody(message.length))
        self.reusable = not message.will_close
        self._fault: OpenAIError | None = None  # found after content that still had to go out
        self.last_data_at = time.monotonic()
        if self.reusable:
            self._message = None
            self._socket = self._connection.sock
            self._read_some = self._socket.recv
            self._arrived = self._read_ahead(message)
            message.close()  # frees its read buffer; the connection stays open
            forget_response(self._connection)
            # Every wait for Dify is bounded by UpstreamStream's own timer (TIMEOUT included): a
            # socket timeout would add a second timer, and an exception object, to each one.
            # urllib3 sets the timeout again for the connection's next request.
            self._socket.settimeout(None)
        else:
            self._message, self._socket, self._arrived = message, None, b""
            self._read_some = message.fp.read1 if message.fp else lambda _size: b""

    @property
    def ended(self) -> bool:
        return self._framing.ended

    def _read_ahead(self, message: Any) -> bytes:
        """The bytes http.client buffered past the headers (usually Dify's first event)."""
        if message.fp is None:
            return b""
        try:
            return self._without_waiting(lambda: message.fp.read1(_RECV_BYTES)) or b""
        except OSError:
            return b""  # the next `recv` meets the same fault

    def _without_waiting(self, call: Callable[[], bytes | None]) -> bytes | None:
        timeout = self._socket.gettimeout()
        self._socket.settimeout(0.0)
        try:
            return call()
        except BlockingIOError:
            return None
        finally:
            self._socket.settimeout(timeout)

    def read(self, wait: bool = True) -> bytes:
        """The next content bytes, waiting for the network; b"" at the end of the body, and
        without `wait` when nothing else arrived."""
        if self._fault is not None:
            raise self._fault
        try:
            while not self._framing.ended:
                data, self._arrived = self._arrived or self._recv(wait), b""
                if data is None:
                    return b""
                if not data:
                    if not self._until_close:
                        raise ConnectionError("closed before the end of the body")
                    self._framing.ended = True
                    return b""
                content = self._framing.feed(data)
                if content:
                    return content
            return b""
        except MalformedBody as exc:
            error = upstream_failure(f"Dify sent a malformed body: {exc}")
            if not exc.content:
                raise error from None
            self._fault = error
            return exc.content
        except TimeoutError:
            raise upstream_timeout("no data from Dify within TIMEOUT seconds") from None
        except (OSError, ValueError):  # ValueError: a reader closed under it ("read of closed file")
            raise upstream_failure("the connection to Dify broke mid-stream", 502, "upstream_disconnected") from None

    def _recv(self, wait: bool) -> bytes | None:
        if wait:
            data = self._read_some(_RECV_BYTES)
        elif self._socket is None:
            return None
        else:
            data = self._without_waiting(lambda: self._socket.recv(_RECV_BYTES))
        if data:
            self.last_data_at = time.monotonic()
        return data

    def read_arrived(self) -> None:
        """Consume, without waiting, what already arrived (usually the end of the body)."""
        try:
            while self.read(wait=False):
                pass
        except OpenAIError:
            pass  # `release` drops the connection

    def finish(self, seconds: float) -> None:
        """Read to the end of the body, waiting at most `seconds`, then release."""
        with gevent.Timeout(seconds, False):
            try:
                while self.read():
                    pass
            except OpenAIError:
                pass
        self.release()

    def release(self) -> None:
        """Give the connection back to the pool when the body ended cleanly; else drop it."""
        try:
            if self._message is not None:
                self._message.close()
            if not (self.reusable and self._framing.ended):
                self._connection.close()  # it goes back to the pool closed, as urllib3 does
            self._put_back(self._connection)
        except Exception:  # cleanup must never turn a finished answer into a failure
            log.warning("closing the Dify response failed", exc_info=True)
