"""The shared tail of every answering route: an engine Answer rendered as one JSON body, or
as an SSE stream whose end (or the client leaving, or reading nothing for TIMEOUT) closes the
answer's Dify runs; either names its Dify conversation in the X-Dify-Conversation-Id header."""

from __future__ import annotations

from flask import Response, jsonify, request

from core.response.render import ResponseShape, collect, sse_body
from dify_io.client_watch import WriteLimit
from edge import observe
from edge.event_stream import event_stream
from edge.wiring import current_gateway
from engine.answer import Answer

# Names the Dify conversation of an answer (and, in a request, the one to continue).
CONVERSATION_HEADER = "X-Dify-Conversation-Id"


def respond(answer: Answer, shape: ResponseShape, stream: bool, include_usage: bool = False) -> Response:
    observe.answered(answer, stream)
    headers = {CONVERSATION_HEADER: answer.conversation_id} if answer.conversation_id else {}
    if not stream:
        collectors = shape.collectors()
        usage = collect(answer.take_first(), answer.next, collectors, answer.close)
        response = jsonify(shape.body(collectors, usage))
        response.headers.update(headers)
        writes = _write_limit()
        if writes is not None:  # the body goes out in one write, which may take TIMEOUT
            writes.arm()
            response.call_on_close(writes.disarm)
        return response
    response = event_stream(sse_body(answer.next, shape.encoders(), include_usage, answer.close,
                                      answer.take_first()), headers)
    writes = _write_limit()
    if writes is not None:
        # A write that cannot go out within TIMEOUT (the client reads nothing) ends the stream.
        answer.bound_writes(writes)
        response.call_on_close(writes.disarm)  # after the last write (gunicorn's end of the chunks)
    return response


def _write_limit() -> WriteLimit | None:
    """A bound of TIMEOUT on writes to this request's client (none outside gunicorn)."""
    client = request.environ.get("gunicorn.socket")
    return None if client is None else WriteLimit(client, current_gateway().settings.timeout)
