"""The shared tail of every answering route: an engine Answer rendered as one JSON body, or
as an SSE stream whose end (or the client leaving) closes the answer's Dify runs; either
names its Dify conversation in the X-Dify-Conversation-Id header."""

from __future__ import annotations

from flask import Response, jsonify

from core.response.render import ResponseShape, collect, sse_body
from edge import observe
from edge.event_stream import event_stream
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
        return response
    return event_stream(sse_body(answer.next, shape.encoders(), include_usage, answer.close, answer.take_first()),
                        headers)
