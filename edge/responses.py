"""POST /v1/responses: the Responses API (Codex CLI, the Agents SDK) answered by a Dify app.

Parse the body into the chat request it amounts to (core/request/responses_request.py), start
the Dify runs (engine/chat.py), render the Response object or its event stream
(core/response/responses_render.py). Responses are not stored: their ids carry the Dify
conversation, so `previous_response_id` works on any instance, and the routes that read,
delete or cancel a stored response answer that there is none.
"""

from __future__ import annotations

from flask import Blueprint, Response

from core.errors import OpenAIError
from core.request.responses_request import parse_responses_request
from core.response.responses_render import ResponseHead, ResponsesShape
from edge.hooks import read_json
from edge.ids import new_id, now
from edge.respond import respond
from edge.wiring import current_caller, current_gateway, resolve_app
from engine.chat import start_chat

bp = Blueprint("responses", __name__)


@bp.post("/responses")
def create_response() -> Response:
    gateway = current_gateway()
    request = parse_responses_request(read_json(), gateway.limits)
    conversation_id, message_id = request.continues or (None, None)
    caller = current_caller(request.chat.user, conversation_id, message_id)
    app = resolve_app(request.chat.model)
    answer = start_chat(gateway, app, request.chat, caller)
    # The id is taken from Dify's ids when they are known: a body's once collected, a stream's
    # before it opens (core/response/responses_render.py).
    head = ResponseHead(answer.dify_ids, new_id("resp", "_"), now(), request.chat.model, request.echoed,
                        hold=app.has_conversations)
    return respond(answer, ResponsesShape(head, request.namespaced), request.chat.stream)


@bp.get("/responses/<path:response_id>")
@bp.delete("/responses/<path:response_id>")
@bp.post("/responses/<path:response_id>/cancel")
def stored_response(response_id: str) -> Response:
    raise OpenAIError(404, f"OpenDify stores no responses, so there is no stored response {response_id!r} to read, "
                           "delete or cancel. Continue a conversation with previous_response_id instead.",
                      param="response_id", code="response_not_stored")
