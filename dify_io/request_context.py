"""The id of the request a greenlet serves, for its log lines, and greenlets that inherit it.

gevent gives each greenlet a context of its own, empty at its start. The edge sets `REQUEST_ID`
when a request begins (edge/observe.py) and clears it when the response is closed; a stream's
body is sent after Flask has popped its request context, so the log filter reads the id here.
The greenlets a request starts (its Dify call, its stop calls, the readers of its choices) are
started with `spawn`, which hands them the id and nothing else of the context: a full copy
would keep Flask's request alive as long as the greenlet.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import gevent

#: The id of the request this greenlet serves (None between requests).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("opendify_request_id", default=None)


def spawn(function: Callable[..., Any], *args: Any) -> gevent.Greenlet:
    """`gevent.spawn`, the new greenlet starting with the spawner's request id."""
    greenlet = gevent.spawn(function, *args)
    request_id = REQUEST_ID.get()
    if request_id is not None:
        context = contextvars.Context()
        context.run(REQUEST_ID.set, request_id)
        greenlet.gr_context = context  # not started yet: it starts at the next turn of the loop
    return greenlet
