"""POST /v1/chat/completions: an OpenAI chat request answered by a Dify app.

Parse the body, start the Dify runs (engine/chat.py), render the answer (edge/respond.py).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from core.errors import invalid_request
from core.request.chat_request import parse_chat_request
from core.response.render import ChatShape
from edge.hooks import read_json
from edge.ids import new_id, now
from edge.respond import CONVERSATION_HEADER, respond
from edge.wiring import current_caller, current_gateway, resolve_app
from engine.chat import start_chat

bp = Blueprint("chat", __name__)

@bp.post("/chat/completions")
def chat_completions() -> Response:
    return answer_chat(read_json())


@bp.post("/engines/<path:model>/chat/completions")  # openai 0.28 with engine= / deployment_id=
@bp.post("/openai/deployments/<path:model>/chat/completions")  # Azure-style clients (api-key header)
def chat_completions_for(model: str) -> Response:
    return answer_chat(read_json(), model)


def answer_chat(body: Any, model: str | None = None) -> Response:
    gateway = current_gateway()
    chat = parse_chat_request(body, model, gateway.limits)
    app = resolve_app(chat.model)
    answer = start_chat(gateway, app, chat, current_caller(chat.user, _requested_conversation_id(body)))
    legacy_functions = bool(chat.tools and chat.tools.legacy)
    shape = ChatShape(new_id("chatcmpl"), now(), chat.model, chat.n, legacy_functions)
    return respond(answer, shape, chat.stream, chat.include_usage)


def _requested_conversation_id(body: dict[str, Any]) -> str | None:
    """An explicit Dify conversation id: the request header, else the body field."""
    value = request.headers.get(CONVERSATION_HEADER) or body.get("conversation_id")
    if value is not None and not isinstance(value, str):
        raise invalid_request("'conversation_id' must be a string.", param="conversation_id", code="invalid_type")
    return value.strip() if value and value.strip() else None
