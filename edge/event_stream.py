"""The streamed SSE response of chat and text completions.

The WSGI server iterates the body generator itself: werkzeug would wrap it in two iterators
of its own, and every level of iterators deepens the stack that each held stream keeps while
it waits for Dify. Only closing needs werkzeug (the `call_on_close` callbacks, which free the
admission slot), and closing needs no wrapper around iteration.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any

from flask import Response

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx must not buffer the stream
}
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


def event_stream(body: Generator[bytes, None, None], headers: dict[str, str] | None = None) -> Response:
    return EventStreamResponse(body, status=200, headers={**STREAM_HEADERS, **(headers or {})},
                               content_type=SSE_CONTENT_TYPE)


class EventStreamResponse(Response):
    """The close callbacks are kept apart from the response, so that the server holds neither
    this object nor its headers for the life of the stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._closers: list[Callable[[], Any]] = []

    def call_on_close(self, func: Callable[[], Any]) -> Callable[[], Any]:
        self._closers.append(func)
        return func

    def get_app_iter(self, environ: dict[str, Any]) -> Iterable[bytes]:
        return _ClosingBody(self.response, self._closers)


class _ClosingBody:
    """What the WSGI server iterates: the body itself (`__iter__`); `close` at the end closes
    it, then runs the response's close callbacks."""

    __slots__ = ("_body", "_closers")

    def __init__(self, body: Generator[bytes, None, None], closers: list[Callable[[], Any]]) -> None:
        self._body = body
        self._closers = closers

    def __iter__(self) -> Generator[bytes, None, None]:
        return self._body

    def close(self) -> None:
        try:
            self._body.close()
        finally:
            for closer in self._closers:
                closer()
